"""Process environment shared by every tfxops process.

TensorFlow Transform 1.16 forces tf_keras (``TF_USE_LEGACY_KERAS=1``) when it is
imported; a model built before that import would get Keras 3 and the Trainer fails
with ``inputs not connected to outputs``. Setting the variable before TensorFlow
is imported, in ``os.environ``, makes it hold here and in every child process
(Beam workers, the server, tests) because children inherit the environment.

A process that is not our child (a Beam worker on another host, a Kubeflow task)
gets these variables from the image it runs: the Dockerfile sets
``image_environment()`` (tests/code/test_images.py keeps the two equal), and a
worker pool started here gets ``worker_environment()``, that and nothing else of
ours but what locates this Python.
"""
import os
import sys
import warnings
from typing import Dict, Mapping, Optional

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


def image_environment() -> Dict[str, str]:
    """The variables an image that runs tfxops code sets (the Dockerfile's ``ENV``)."""
    return {**REQUIRED, **QUIET}


def worker_environment(launcher: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The whole environment of a Beam worker pool started on this machine: what the
    image would set, ``PATH`` with this interpreter's directory first (workers run
    ``python`` from it, as in the image), and ``HOME``/``PYTHONPATH`` if the
    launcher (default ``os.environ``) has them. Nothing else of the launcher's."""
    launcher = os.environ if launcher is None else launcher
    environment = image_environment()
    environment["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
    for key in ("HOME", "PYTHONPATH"):
        if launcher.get(key):
            environment[key] = launcher[key]
    return environment


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
