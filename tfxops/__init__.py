"""tfxops: a TFX pipeline, TF Serving-compatible serving, monitoring and lineage.

Importing this package fixes the process environment every tfxops process needs
before TensorFlow is imported (see ``tfxops.env``).
"""
from tfxops import env as _env

_env.apply()

__version__ = "0.1.0"
