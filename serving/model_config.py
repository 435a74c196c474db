"""TF Serving's own configuration files, read (and the model list written) as TF
Serving reads them, so one set of files configures TF Serving and ``tfxops serve``:

* ``--model_config_file``: a text ``ModelServerConfig`` (``model_config_list``: each
  model's name, base_path, model_platform, model_version_policy, version_labels),
  parsed with tensorflow-serving-api's ``model_server_config_pb2`` and checked with
  TF Serving's rules and words (server_core.cc): one entry per name, an absolute
  base_path, platform ``tensorflow``, no ``custom_model_config``; a label must point to a
  version the policy serves. ``ModelConfigError`` names the file, the field and the fix.
* ``--batching_parameters_file`` (``BatchingParameters``) and
  ``--monitoring_config_file`` (``MonitoringConfig``): their messages are not in the
  tensorflow-serving-api wheel; they are declared here with TF Serving's field names
  (session_bundle_config.proto, monitoring_config.proto) and parsed by protobuf's text
  format, so a file TF Serving reads reads here and a misspelt field is refused.
* ``container_volumes`` (compose's ``host:container`` volumes): the paths inside
  those files are the container's (``/models/taxi``); ``host_path`` reads each from the
  host directory mounted there, so the compose file's very files serve here too.
* ``reload_server``: ModelService.HandleReloadConfigRequest to a running server.
"""
import dataclasses
import logging
import os
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from core import storage
from core.pushdir import existing_versions
from core.served import config_file_of, host_path, parse_labels, parse_model_server_config
from serving.access import PROMETHEUS_METRICS_PATH as DEFAULT_METRICS_PATH
from serving.models import VersionPolicy

log = logging.getLogger("tfxops.serving")

TENSORFLOW_PLATFORM = "tensorflow"
INVALID_ARGUMENT, FAILED_PRECONDITION = "INVALID_ARGUMENT", "FAILED_PRECONDITION"
NOTHING_LISTENS, CALL_FAILED, NOT_CONFIRMED = "NOTHING_LISTENS", "CALL_FAILED", "NOT_CONFIRMED"   # reload_server
OVERRIDDEN_SETTINGS = ("model_version_policy", "version_labels")    # what a model config file replaces


@dataclass(frozen=True)
class ServedModel:
    """One ``model_config_list`` entry."""
    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy("latest")
    labels: Dict[str, int] = field(default_factory=dict)


class ModelConfigError(ValueError):
    """A configuration TF Serving would refuse: the message names the file or field
    and the fix; ``code`` is TF Serving's status code for it."""

    def __init__(self, message: str, code: str = INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ model config
def read_model_config(path: str) -> List[ServedModel]:
    """The models of the text-format ModelServerConfig at ``path`` (paths as written)."""
    from google.protobuf import text_format

    text = _read_text(path, "model_config_file")
    try:
        config = parse_model_server_config(text)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"Invalid protobuf file: '{path}': {exc}. Fix the file: it must be a text "
                               f"ModelServerConfig (model_config_list {{ config {{ name: ... base_path: ... "
                               f"model_platform: \"tensorflow\" }} }})") from None
    models = served_models(config, path)
    if not models:
        raise ModelConfigError(f"{path} lists no model: add model_config_list {{ config {{ name: ... "
                               f"base_path: ... model_platform: \"tensorflow\" }} }}")
    return models


def served_models(config, source: str) -> List[ServedModel]:
    """The models of a ModelServerConfig message (from ``source``: a file, or a
    ReloadConfigRequest), checked as TF Serving checks them; [] for an empty config."""
    kind = config.WhichOneof("config")
    if kind == "custom_model_config":
        raise ModelConfigError(f"{source}: ModelServer does not yet support custom model config. Fix: "
                               f"list the models under model_config_list")
    if kind is None:
        return []
    models, names = [], set()
    for index, entry in enumerate(config.model_config_list.config):
        where = f"{source}: model_config_list.config[{index}]"
        if not entry.name:
            raise ModelConfigError(f"{where} has no name: give it one (the name clients ask for)")
        if entry.name in names:
            raise ModelConfigError(f"{source}: Illegal to list model {entry.name} multiple times in config "
                                   f"list. Fix: keep one entry per name")
        names.add(entry.name)
        _check_entry(entry, f"{source}: model {entry.name}")
        models.append(ServedModel(entry.name, entry.base_path, _policy(entry, where),
                                  {label: int(v) for label, v in entry.version_labels.items()}))
    return models


def _check_entry(entry, where: str) -> None:
    """TF Serving's checks of one entry that tfxops serve shares (server_core.cc)."""
    if entry.model_type and entry.model_platform:
        raise ModelConfigError(f"{where}: Illegal setting both ModelServerConfig::model_type (deprecated) and "
                               f"ModelServerConfig::model_platform. Fix: keep model_platform: \"tensorflow\"")
    platform = TENSORFLOW_PLATFORM if entry.model_type == 1 else entry.model_platform
    if not platform:
        raise ModelConfigError(f"{where}: Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                               f"ModelServerConfig::model_platform. Fix: add model_platform: \"tensorflow\"")
    if platform != TENSORFLOW_PLATFORM:
        raise ModelConfigError(f"{where}: model_platform \"{platform}\" is not supported: tfxops serve "
                               f"serves TensorFlow SavedModels (model_platform: \"tensorflow\")")
    if not entry.base_path or not (entry.base_path.startswith("/") or storage.is_uri(entry.base_path)):
        raise ModelConfigError(f"{where}: Expected model {entry.name} to have an absolute path or URI; got "
                               f"base_path()={entry.base_path}. Fix: give base_path as an absolute path")
    if entry.HasField("logging_config"):
        raise ModelConfigError(f"{where}: logging_config is not supported (TF Serving's open-source build "
                               f"refuses it too); tfxops serve logs requests to request_log_dir: remove it")


def _policy(entry, where: str) -> VersionPolicy:
    policy = entry.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        if not policy.specific.versions:
            raise ModelConfigError(f"{where}.model_version_policy.specific lists no version: add "
                                   f"versions: N, or use latest {{}}")
        return VersionPolicy("specific", versions=tuple(sorted(set(policy.specific.versions))))
    if kind == "all":
        return VersionPolicy("all")
    return VersionPolicy("latest", max(1, policy.latest.num_versions) if kind == "latest" else 1)


def check_labels(models: Sequence[ServedModel], source: str) -> None:
    """Each label must point to a version the model's policy serves: among the
    versions on disk now for latest/all (TF Serving also wants it AVAILABLE already:
    ``--allow_version_labels_for_unavailable_models``), among those it names for
    specific. Raises TF Serving's FAILED_PRECONDITION, naming the fix."""
    for model in models:
        if not model.labels:
            continue
        if model.policy.kind == "specific":
            served = list(model.policy.versions)
        else:
            served = model.policy.select(existing_versions(model.base_path))
        for label, version in sorted(model.labels.items()):
            if version not in served:
                raise ModelConfigError(
                    f"{source}: Request to assign label to version {version} of model {model.name}, which is "
                    f"not currently available for inference (label {label}; policy {model.policy} serves "
                    f"{served or 'no version'}). Fix: point {label} to a served version or change the "
                    f"model_version_policy", FAILED_PRECONDITION)


def model_server_config(models: Sequence[ServedModel]):
    """The ModelServerConfig message of ``models`` (what TF Serving reads)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = model.name, model.base_path, TENSORFLOW_PLATFORM
        policy = entry.model_version_policy
        if model.policy.kind == "specific":
            policy.specific.versions.extend(model.policy.versions)
        elif model.policy.kind == "all":
            policy.all.SetInParent()
        else:
            policy.latest.num_versions = model.policy.count
        for label, version in model.labels.items():
            entry.version_labels[label] = version
    return config


def write_model_config(path: str, models: List[ServedModel]) -> None:
    """Write ``models`` as a text ModelServerConfig at ``path``, atomically (a reader
    sees the old file or the new one, never half of it)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(model_server_config(models))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".models.config.", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ------------------------------------------------------------------ from settings
def models_from_settings(settings) -> List[ServedModel]:
    """The models to serve: those of the model config file (``config_file_of``; base
    paths as the host sees them, through container_volumes), else one model from
    model_name, model_push_dir, model_version_policy and version_labels."""
    path = config_file_of(settings)
    if path:
        return [ServedModel(m.name, host_path(m.base_path, settings.container_volumes), m.policy, m.labels)
                for m in read_model_config(path)]
    return [ServedModel(settings.model_name, str(settings.model_push_dir),
                        VersionPolicy.parse(settings.model_version_policy), parse_labels(settings.version_labels))]


@dataclass(frozen=True)
class ServingFiles:
    """What TF Serving's files configure, for ``tfxops serve``: the models, the settings
    with the batching file's values applied (a setting given explicitly wins), the
    batch threads, and where the metrics are ("": not exposed)."""
    models: List[ServedModel]
    settings: object                   # core.config.Settings
    num_batch_threads: Optional[int] = None
    metrics_path: str = DEFAULT_METRICS_PATH
    config_file: str = ""              # the model config file read (host path; "": none)


# BatchingParameters field -> the setting it sets
BATCHING_SETTINGS = {"max_batch_size": "max_batch_size", "batch_timeout_micros": "batch_timeout_micros"}


def read_serving_files(settings, explicit: Sequence[str] = ()) -> ServingFiles:
    """Read model_config_file (or the settings' one model), batching_parameters_file
    and monitoring_config_file; ``explicit``: the settings given on the command line or
    in the environment, which win over the batching file. ModelConfigError names the
    file, the field and the fix; nothing is loaded yet."""
    models = models_from_settings(settings)
    if config_file_of(settings):       # (version_labels alone are served as before: unchecked)
        check_labels(models, config_file_of(settings))
        _warn_overridden(config_file_of(settings), explicit)
    threads, values = None, {}
    if settings.batching_parameters_file:
        batching = read_batching_parameters(host_path(settings.batching_parameters_file,
                                                      settings.container_volumes))
        values = {setting: getattr(batching, field) for field, setting in BATCHING_SETTINGS.items()
                  if getattr(batching, field) is not None and setting not in explicit}
        if batching.max_enqueued_batches and "max_concurrent_requests" not in explicit:
            size = values.get("max_batch_size", settings.max_batch_size)
            values["max_concurrent_requests"] = max(1, batching.max_enqueued_batches) * size
        threads = batching.num_batch_threads
    metrics_path = DEFAULT_METRICS_PATH
    if settings.monitoring_config_file:
        monitoring = read_monitoring_config(host_path(settings.monitoring_config_file, settings.container_volumes))
        metrics_path = monitoring.path if monitoring.enabled else ""
    return ServingFiles(models, dataclasses.replace(settings, **values), threads, metrics_path,
                        config_file_of(settings))


def _warn_overridden(path: str, explicit: Sequence[str]) -> None:
    """A model config file (model_config_file, or the one tfxops promote wrote) replaces
    the model_version_policy and version_labels settings: say so when they were given."""
    given = [name for name in OVERRIDDEN_SETTINGS if name in explicit]
    if given:
        log.warning("%s given but NOT used: the model config file %s sets each model's policy and labels. Fix: "
                    "edit that file (or delete it to serve from the settings again)", " and ".join(given), path)


def _read_text(path: str, setting: str) -> str:
    try:
        with open(path, encoding="utf-8") as source:
            return source.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ModelConfigError(f"cannot read {setting} {path} ({reason}): check the path (with "
                               f"container_volumes, the container path is read from the host path)") from None


# ------------------------------------------------------------------ batching and monitoring
@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (None: not in the file)."""
    max_batch_size: Optional[int] = None
    batch_timeout_micros: Optional[int] = None
    num_batch_threads: Optional[int] = None
    max_enqueued_batches: Optional[int] = None


@dataclass(frozen=True)
class MonitoringConfig:
    """TF Serving's MonitoringConfig: Prometheus metrics on the REST port at ``path``
    when ``enabled``."""
    enabled: bool
    path: str


_WRAPPED = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")


def read_batching_parameters(path: str) -> BatchingParameters:
    message = _parse_text(path, "batching_parameters_file", "BatchingParameters")
    values = {name: getattr(message, name).value for name in _WRAPPED if message.HasField(name)}
    for name, value in values.items():
        may_be_zero = name in ("batch_timeout_micros", "max_enqueued_batches")
        if value < (0 if may_be_zero else 1):
            raise ModelConfigError(f"{path}: {name} {{ value: {value} }} is out of range: use a "
                                   f"{'non-negative' if may_be_zero else 'positive'} value")
    return BatchingParameters(**values)


def read_monitoring_config(path: str) -> MonitoringConfig:
    message = _parse_text(path, "monitoring_config_file", "MonitoringConfig")
    prometheus = message.prometheus_config
    metrics_path = prometheus.path or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        raise ModelConfigError(f"{path}: prometheus_config.path {metrics_path!r} must start with /")
    return MonitoringConfig(prometheus.enable, metrics_path)


def _parse_text(path: str, setting: str, message_name: str):
    from google.protobuf import text_format

    message = _serving_messages()[message_name]()
    try:
        text_format.Parse(_read_text(path, setting), message)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"Invalid protobuf file: '{path}': {exc}. Fix the file: it must be a text "
                               f"{message_name} as TF Serving reads it") from None
    return message


_MESSAGES: Dict[str, type] = {}


def _serving_messages() -> Dict[str, type]:
    """BatchingParameters and MonitoringConfig, declared with TF Serving's field names
    in a descriptor pool of their own."""
    if _MESSAGES:
        return _MESSAGES
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    proto = descriptor_pb2.FileDescriptorProto(name="tfxops_serving_config.proto", package="tensorflow.serving",
                                               syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    batching = proto.message_type.add(name="BatchingParameters")
    for number, name in enumerate(_WRAPPED, 1):
        batching.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                           type_name=".google.protobuf.Int64Value")
    batching.field.add(name="thread_pool_name", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                       type_name=".google.protobuf.StringValue")
    batching.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    factory = message_factory.MessageFactory(pool)
    for name in ("BatchingParameters", "MonitoringConfig"):
        _MESSAGES[name] = factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
    return _MESSAGES


# ------------------------------------------------------------------ a running server
def reload_server(grpc_target: str, models: List[ServedModel], timeout: float = 10.0,
                  token: str = "", ca_file: str = "") -> None:
    """Send ``models`` to the server at ``grpc_target`` (host:port) as
    ModelService.HandleReloadConfigRequest (TF Serving's, or tfxops serve's): its model
    list becomes ``models``. ModelConfigError, ``code``: NOTHING_LISTENS (the TCP
    connection refused), CALL_FAILED (it listens, the call failed: TLS, token),
    NOT_CONFIRMED (no answer within ``timeout``), else the server's refusal code."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    _check_listening(grpc_target)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(model_server_config(models))
    if ca_file:
        with open(ca_file, "rb") as pem:
            channel = grpc.secure_channel(grpc_target, grpc.ssl_channel_credentials(pem.read()))
    else:
        channel = grpc.insecure_channel(grpc_target)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        raise _reload_error(grpc_target, exc, timeout, ca_file) from None
    finally:
        channel.close()


def _check_listening(grpc_target: str) -> None:
    """ModelConfigError NOTHING_LISTENS when a TCP connection to ``grpc_target`` is refused."""
    host, _, port = grpc_target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        if isinstance(exc, socket.timeout):
            return                     # something may listen behind a slow network: the call says
        raise ModelConfigError(f"no model server answers at {grpc_target}: nothing listens there "
                               f"({getattr(exc, 'strerror', None) or exc})", NOTHING_LISTENS) from None


def _reload_error(grpc_target: str, exc, timeout: float, ca_file: str) -> ModelConfigError:
    import grpc

    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ModelConfigError(f"the model server at {grpc_target} did not confirm the new model config within "
                                f"{timeout:.0f} s (it may still apply it). Fix: check which versions it serves "
                                f"(GET /v1/models/NAME) and run the command again", NOT_CONFIRMED)
    if code == grpc.StatusCode.UNAVAILABLE:
        fix = ("if it talks TLS, pass --ca-file (the CA of its certificate; default: the tls_cert_file setting)"
               if not ca_file else f"check that {ca_file} is the CA of its certificate, or that it talks TLS")
        return ModelConfigError(f"a server listens at {grpc_target} but the call failed (UNAVAILABLE: "
                                f"{exc.details()}). Fix: {fix}", CALL_FAILED)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ModelConfigError(f"the model server at {grpc_target} refused the call ({code.name}: "
                                f"{exc.details()}). Fix: pass --token-file with a token allowed to reload, "
                                f"or run the command on the server's machine", CALL_FAILED)
    return ModelConfigError(f"the model server at {grpc_target} refused the new model config: "
                            f"{code.name}: {exc.details()}", code.name)
