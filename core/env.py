"""Process environment shared by every tfxops process.

TensorFlow Transform 1.16 forces tf_keras (``TF_USE_LEGACY_KERAS=1``) when it is
imported; a model built before that import would get Keras 3 and the Trainer fails
with ``inputs not connected to outputs``. Setting the variable before TensorFlow
is imported, in ``os.environ``, makes it hold here and in every child process
(Beam workers, the server, tests) because children inherit the environment.
"""
import os
import warnings

REQUIRED = {
    "TF_USE_LEGACY_KERAS": "1",
}
QUIET = {
    # C++ INFO/WARNING lines from TensorFlow; errors still show.
    "TF_CPP_MIN_LOG_LEVEL": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}


def set_process_environment() -> None:
    """Set what every tfxops process needs before TensorFlow is imported. Entry points
    (the CLI, tests, benchmarks, the schema script) call this first; children inherit it."""
    for key, value in REQUIRED.items():
        os.environ[key] = value
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    # google-api-core warns on import that Python 3.10 support ends; harmless.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def skip_autograph_for_libraries() -> None:
    """Tell AutoGraph not to transpile tf_keras and tf.Transform's own code.

    AutoGraph leaves ``tensorflow`` and ``keras`` alone, but not ``tf_keras``
    (TF_USE_LEGACY_KERAS) nor ``tensorflow_transform``: it would rewrite hundreds of
    library functions the first time a model is trained or a transform layer is
    traced, code that needs no conversion (both run unconverted under TensorFlow's
    own copy of Keras and in TF1 graph mode). Call before building models; idempotent.
    """
    from tensorflow.python.autograph.core import config as autograph_config

    extra = [autograph_config.DoNotConvert(name) for name in ("tf_keras", "tensorflow_transform")]
    known = {getattr(rule, "_prefix", None) for rule in autograph_config.CONVERSION_RULES}
    new = tuple(rule for rule in extra if rule._prefix not in known)
    if new:
        autograph_config.CONVERSION_RULES = new + tuple(autograph_config.CONVERSION_RULES)
