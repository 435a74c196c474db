"""The MLflow tracking store the mirror writes to: its URI, the client, the experiments,
and the one warning line when the store cannot be used.

MLflow is imported on first use (``client``), never by importing this module, so
commands that do not mirror anything do not pay for it. MLflow's usage telemetry is
off unless the environment already decides (``MLFLOW_DISABLE_TELEMETRY``,
``DO_NOT_TRACK``), and an HTTP tracking server that does not answer is given up
after a short retry (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_TIMEOUT`` when unset).

MLflow makes a new SQLite store by running its whole chain of schema migrations
(seconds); a new SQLite store here starts as a copy of an empty one that MLflow
migrated once per machine and MLflow version (``<XDG cache>/tfxops/``), made and
linked into place atomically, so a store is never replaced once it exists.
"""
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, TypeVar

from core import storage
from core.config import Settings

log = logging.getLogger("tfxops.tracking")
T = TypeVar("T")

URI_SETTING = "mlflow_tracking_uri"
DEFAULT_DATABASE = "mlflow.db"               # under home: sqlite:///<home>/mlflow.db
DEFAULT_ARTIFACTS = "mlflow-artifacts"       # under home, for experiments of the default store
MONITOR_EXPERIMENT_SUFFIX = "-monitor"       # monitor windows: "<mlflow_experiment>-monitor"
MLFLOW_ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",      # no usage reports to MLflow's servers
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # a tracking server that is down: one retry, not minutes
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
QUIET_LOGGERS = ("mlflow", "alembic")        # their notes and tracebacks: not for the console (the warning says it)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*):[^/@]*@")


class StoreUnusable(RuntimeError):
    """The tracking store cannot be used; the message says why, in words."""


def tracking_uri(settings: Settings) -> str:
    """``mlflow_tracking_uri``, else a SQLite database in home (absolute)."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    if storage.is_uri(settings.home):
        raise StoreUnusable(f"home ({settings.home}) is not a local directory, so the default SQLite store "
                            f"cannot live there")
    return "sqlite:///" + str(Path(settings.home).resolve() / DEFAULT_DATABASE)


def shown_uri(uri: str) -> str:
    """The URI for messages: a password in it is replaced by ***."""
    return _USERINFO.sub(r"\1:***@", uri)


def default_artifact_location(settings: Settings) -> Optional[str]:
    """Where a new experiment of the default store keeps artifacts (home); None (the
    store's own default) for a configured URI."""
    if settings.mlflow_tracking_uri:
        return None
    return (Path(settings.home).resolve() / DEFAULT_ARTIFACTS).as_uri()


def registered_model_name(settings: Settings) -> str:
    return settings.mlflow_registered_model or settings.model_name


def client(settings: Settings):
    """An ``MlflowClient`` for the tracking and registry store of ``settings``."""
    for name, value in MLFLOW_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    uri = tracking_uri(settings)
    _start_sqlite_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _start_sqlite_store(uri: str) -> None:
    """A SQLite store that does not exist yet starts as a copy of the empty one."""
    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:////") else None
    if path is None or path.exists() or not path.parent.is_dir():
        return
    template = _empty_sqlite_store()
    if template is not None:
        _link_copy(template, path)


def _empty_sqlite_store() -> Optional[Path]:
    """The empty store MLflow migrated once for this MLflow version (None if the cache
    directory cannot be written: MLflow then migrates the new store itself)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfxops"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.exists():
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            made = Path(scratch) / "empty.db"
            MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
            _link_copy(made, template)
    except Exception:  # noqa: BLE001 - no template: MLflow migrates the new store itself
        log.info("no empty MLflow store template in %s", cache, exc_info=True)
        return None
    return template


def _link_copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` unless ``target`` exists (then it is left alone)."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as staged:
        pass
    try:
        shutil.copyfile(source, staged.name)
        os.link(staged.name, target)
    except FileExistsError:
        pass
    finally:
        os.unlink(staged.name)


def experiment_id(mlflow_client, name: str, artifact_location: Optional[str]) -> str:
    """The id of the experiment ``name``, created (or restored from deleted) when needed."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    if found.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    return found.experiment_id


def mirrored(settings: Settings, what: str, write: Callable[[object], T]) -> Optional[T]:
    """``write(client)``'s result, or None: when ``mlflow_tracking`` is off, and when the
    store cannot be used (one warning line on stderr naming the URI and the setting;
    the exception goes to the ``tfxops.tracking`` logger at INFO). The mirror never
    fails what it mirrors."""
    if not settings.mlflow_tracking:
        return None
    uri = shown_uri(settings.mlflow_tracking_uri) or f"sqlite:///<home>/{DEFAULT_DATABASE}"
    try:
        uri = shown_uri(tracking_uri(settings))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return write(client(settings))
    except Exception as exc:  # noqa: BLE001 - a broken store costs a warning, never the run
        log.info("MLflow mirror of %s failed", what, exc_info=True)
        sys.stderr.write(f"warning: {what} not mirrored to MLflow: the tracking store {uri} (setting "
                         f"{URI_SETTING}) cannot be used ({reason(exc)}); fix the setting, or turn the "
                         f"mirror off with mlflow_tracking=false\n")
        return None


def reason(exc: BaseException) -> str:
    """Why the store could not be used, in words (no exception text for unknown errors)."""
    if isinstance(exc, StoreUnusable):
        return str(exc)
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    if "Connection" in text or "Max retries exceeded" in text or "timed out" in text.lower():
        return "no tracking server answers there"
    if isinstance(exc, OSError) or "unable to open database file" in text or "OperationalError" in text:
        return "the database cannot be opened or written"
    if "filesystem tracking backend" in text:
        return "MLflow refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true: use a sqlite:/// URI"
    if type(exc).__name__ == "MlflowException":
        return "the store refused the write: " + str(exc).splitlines()[0][:200]
    return "an unexpected MLflow error"
