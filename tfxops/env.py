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


def apply() -> None:
    for key, value in REQUIRED.items():
        os.environ[key] = value
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    # google-api-core warns on import that Python 3.10 support ends; harmless.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
