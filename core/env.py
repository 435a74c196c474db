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
import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, Mapping, Optional, TextIO

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


# ---------------------------------------------------------------- library output
LIBRARY_LOG_NAME = "tfxops.log"     # under log_dir (<home>/logs): what libraries print, every command
OWN_LOGGERS = ("tfxops", "root")    # this project's loggers (tfxops.*) and bare logging.* calls
# tornado's access log: tfxops serve's and the proxy's lines of 4xx/5xx answers (serving/rest.py)
OWN_LIBRARY_LOGGERS = ("tornado.access",)
Console = Callable[[TextIO], TextIO]


@contextlib.contextmanager
def library_output_to(log_path: Path, prints_to_terminal: bool = False) -> Iterator[Console]:
    """Send what libraries print to ``log_path`` (appended): file descriptors 1 and 2
    (TensorFlow's C++ start-up lines, gRPC, Beam workers and other children), every
    Python log record and every Python warning. Yields ``console(stream)``: for the
    ``sys.stdout`` / ``sys.stderr`` of before, a stream to where it wrote (the
    terminal); any other stream unchanged. Python's own ``sys.stdout`` /
    ``sys.stderr`` meanwhile: with ``prints_to_terminal`` (a command that prints what
    it says) the terminal, else the log file too (what libraries print from Python,
    such as Keras' progress; the caller writes through ``console``). Nested uses send
    the output to the inner file while they last."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    originals = {"stdout": sys.stdout, "stderr": sys.stderr}
    consoles = {id(stream): _stream_to(saved[fd]) if _descriptor(stream) == fd else stream
                for fd, stream in ((1, sys.stdout), (2, sys.stderr))}
    root = logging.getLogger()
    old_level, old_handlers = root.level, list(root.handlers)
    capturing = getattr(warnings.showwarning, "__module__", "") == "logging"
    with _open_log(log_path) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        to_log = _stream_to(log.fileno())
        for name, stream in originals.items():
            setattr(sys, name, consoles[id(stream)] if prints_to_terminal else to_log)
        handler = _LibraryLogHandler(to_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
        # an outer use's handlers rest meanwhile; others (a test's capture) stay
        root.handlers = [h for h in old_handlers if not isinstance(h, _OurHandler)] + [handler]
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            yield lambda stream: consoles.get(id(stream), stream)
        finally:
            _restore(saved, originals, [to_log] + [c for c in consoles.values() if c not in originals.values()])
            logging.captureWarnings(capturing)
            root.handlers = old_handlers
            root.setLevel(old_level)


def _open_log(log_path: Path):
    """``log_path`` opened to append: created 0600, never through a symbolic link,
    and only when it is this user's; else (a file of another user's, a link planted
    in the temporary directory) a new private file beside it (named in the log)."""
    from core.redact import open_private

    try:
        fd = open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        if os.fstat(fd).st_uid == os.getuid():
            return os.fdopen(fd, "ab", buffering=0)
        os.close(fd)
    except OSError:
        pass
    fd, path = tempfile.mkstemp(prefix=f"tfxops-{os.getuid()}-", suffix=".log", dir=log_path.parent)
    log = os.fdopen(fd, "ab", buffering=0)
    log.write(f"{log_path} is not this user's file: library output goes here instead ({path})\n".encode())
    return log


def _restore(saved: Dict[int, int], originals: Dict[str, TextIO], opened: list) -> None:
    """File descriptors 1 and 2 and sys.stdout / sys.stderr as they were; the streams
    ``library_output_to`` opened, closed."""
    for stream in (sys.stdout, sys.stderr, *originals.values()):
        stream.flush()
    for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)
    for name, stream in originals.items():
        setattr(sys, name, stream)
    for stream in opened:
        stream.close()


def show_own_logs(level: int, fmt: str = "%(asctime)s %(levelname)s %(message)s") -> None:
    """Also write this project's log records (``OWN_LOGGERS``, ``OWN_LIBRARY_LOGGERS``) of ``level`` and above
    to ``sys.stderr``, the terminal under ``library_output_to``: what a server or the
    monitor says about itself. Libraries' records stay in the log file. Replaces the
    handler an earlier call added."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _OwnLogsHandler)]
    handler = _OwnLogsHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(lambda record: record.name.split(".", 1)[0] in OWN_LOGGERS
                      or record.name in OWN_LIBRARY_LOGGERS)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)


class _OurHandler(logging.StreamHandler):
    """A handler of this module's (found again by its class)."""


class _LibraryLogHandler(_OurHandler):
    """Every record, to ``library_output_to``'s file."""


class _OwnLogsHandler(_OurHandler):
    """This project's records, to the terminal (``show_own_logs``)."""


def library_log_path(logs_dir: Optional[Path] = None, home: Optional[Path] = None) -> Path:
    """Where a command's library output goes: ``logs_dir``/tfxops.log when the home
    (or that directory) exists and can be written; else (and before the home is
    known) a file of this user's in the temporary directory: a command never creates
    a home that is not there (a typo stays a typo)."""
    if logs_dir is not None and (logs_dir.is_dir() or (home is not None and home.is_dir())):
        try:
            logs_dir.mkdir(parents=True, exist_ok=True)
            if os.access(logs_dir, os.W_OK):
                return logs_dir / LIBRARY_LOG_NAME
        except OSError:
            pass
    return Path(tempfile.gettempdir()) / f"tfxops-{os.getuid()}.log"


def _descriptor(stream) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _stream_to(descriptor: int) -> TextIO:
    """A text stream to a copy of ``descriptor`` (kept when 1 and 2 are redirected)."""
    return io.TextIOWrapper(os.fdopen(os.dup(descriptor), "wb", buffering=0), write_through=True)
