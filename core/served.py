"""Which version answers the requests that name no version and no label: the one
rule the server (``serving.models.ModelManager``), ``tfxops promote``/``rollback``
and the monitor share.

``default_version``: the ``stable_label``'s version when it is among ``versions``
(loaded, or on disk), else the newest that is not the ``canary_label``'s, else the
newest. ``served_model`` reads a model's base path and labels from the model
config file ``tfxops serve`` reads (``config_file_of``: ``model_config_file``, else
``<home>/serving/models.config`` when it exists; TF Serving's text ModelServerConfig),
else from the settings (``model_push_dir``, ``version_labels``).
"""
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence

from core import pushdir, storage


@dataclass(frozen=True)
class ServedLabels:
    """A served model's versions directory and version labels, and where they were read."""
    name: str
    base_path: str
    labels: Dict[str, int] = field(default_factory=dict)
    config_file: str = ""          # "": from the settings


def default_version(versions: Iterable[int], labels: Dict[str, int], stable_label: str,
                    canary_label: str) -> Optional[int]:
    """The version answering requests that name no version, among ``versions``; None if none."""
    versions = set(versions)
    stable = labels.get(stable_label)
    if stable in versions:
        return stable
    others = versions - {labels.get(canary_label)}
    return max(others or versions) if versions else None


def parse_labels(text: str) -> Dict[str, int]:
    """'stable=1,canary=2' -> {'stable': 1, 'canary': 2} (the version_labels setting)."""
    labels = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, version = item.partition("=")
        if not sep or not name.strip() or not version.strip().isdigit():
            raise ValueError(f"version_labels expects label=version[,label=version]; got {item!r}")
        labels[name.strip()] = int(version)
    return labels


def host_path(path: str, volumes: Sequence[str]) -> str:
    """``path`` as seen from the host, when it lies under the container side of one
    of ``volumes`` (compose's ``host:container[:mode]``; a relative host side is
    relative to the working directory, as compose's to the compose file)."""
    best = None
    for volume in volumes:
        host, container = volume.split(":")[:2]
        container = container.rstrip("/") or "/"
        if path == container or path.startswith(container.rstrip("/") + "/"):
            if best is None or len(container) > len(best[1]):
                best = (host, container)
    if best is None:
        return path
    rest = path[len(best[1]):].lstrip("/")
    return os.path.join(os.path.abspath(best[0]), rest) if rest else os.path.abspath(best[0])


def config_file_of(settings) -> str:
    """The model config file ``tfxops serve`` reads (host path): model_config_file, else
    <home>/serving/models.config when it exists, else "" (one model from the settings)."""
    if settings.model_config_file:
        return host_path(settings.model_config_file, settings.container_volumes)
    written = settings.served_model_config_path
    return str(written) if storage.exists(written) and not storage.isdir(written) else ""


def parse_model_server_config(text: str):
    """TF Serving's text ModelServerConfig message (protobuf's ParseError when it is not one)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def served_model(settings, model_name: Optional[str] = None) -> Optional[ServedLabels]:
    """``model_name``'s (default: the model_name setting) base path (as the host sees it)
    and labels; None when the model config file does not list it. OSError / ParseError
    when that file cannot be read."""
    name = model_name or settings.model_name
    path = config_file_of(settings)
    if not path:
        if name != settings.model_name:
            return None
        return ServedLabels(name, str(settings.model_push_dir), parse_labels(settings.version_labels))
    with open(path, encoding="utf-8") as source:
        config = parse_model_server_config(source.read())
    for entry in config.model_config_list.config:
        if entry.name == name:
            return ServedLabels(name, host_path(entry.base_path, settings.container_volumes),
                                {label: int(v) for label, v in entry.version_labels.items()}, path)
    return None


def current_version(settings, model_name: Optional[str] = None) -> Optional[int]:
    """The version on disk that answers requests naming no version (``default_version``
    over the push directory); None when the model has no version (or is not served)."""
    model = served_model(settings, model_name)
    if model is None:
        return None
    return default_version(pushdir.existing_versions(model.base_path), model.labels,
                           settings.stable_label, settings.canary_label)
