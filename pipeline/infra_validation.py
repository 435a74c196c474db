"""InfraValidator: before a candidate is pushed, load it in the serving runtime and
send it its warm-up requests, the job of TFX's InfraValidator (which needs Docker or
Kubernetes to run TF Serving); here the runtime is ``tfxops serve`` itself.

What it does, for a candidate the Evaluator blessed (with none, it does not load the
candidate: the Pusher would not push it anyway, and nothing is spent on it):

1. copies the candidate's SavedModel into a scratch push directory,
   ``<tmp>/serving/<model_name>/1``, with the warm-up file the Pusher will write
   (``pipeline.warmup``: the same rows of the eval split, so the same file);
2. starts ``tfxops serve`` on it as a subprocess (``sys.executable -m tfxops.cli
   serve``, a home of its own, 127.0.0.1 on free ports, no request log, no
   integrity check: the candidate is not published yet, so it has no manifest; the
   environment's ``TFXOPS_*`` settings left out, so it is the runtime's defaults
   that are validated). The server replays the warm-up file before the version
   becomes AVAILABLE (``serving.warmup``); a replay that fails, like any failed
   load, leaves the version END with the error;
3. reads the version's state (REST ``GET /v1/models/<name>``): AVAILABLE, or the
   load's error code and message;
4. sends each warm-up request again as a real request over gRPC (Predict, Classify,
   Regress), as TFX's InfraValidator does in its LOAD_AND_QUERY mode;
5. stops the server (SIGTERM), within ``infra_validation_timeout_seconds`` in all.

A subprocess, not an import of ``serving``: the pipeline uses only ``core``
(docs/architecture.md), and the process is the very one a user runs, ports,
front ends and loader included.

Its output is TFX's standard ``InfraBlessing``, as TFX's InfraValidator writes it
(the file ``INFRA_BLESSED`` or ``INFRA_NOT_BLESSED``, custom property ``blessed``
1/0), plus ``reason`` (why not), ``warmup_requests``, ``seconds``, ``model_uri``
(the model judged) and the server's log (``serve.log``). The AtomicPusher
(``pipeline.pusher``) takes it as TFX's Pusher does (``infra_blessing``) and does not
push a candidate it did not bless; its ``not_pushed_reason`` (the run summary's
"pushed: nothing (...)") is the reason.
"""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tfx import v1 as tfx
from tfx.types import standard_component_specs

from core import storage, warmup
from core.config import ENV_PREFIX
from core.ports import free_port
from pipeline import warmup as warmup_lib

COMPONENT_ID = "InfraValidator"
INFRA_BLESSING_KEY = standard_component_specs.INFRA_BLESSING_KEY   # the Pusher's input
BLESSED_KEY = "blessed"                                            # TFX's InfraValidator property
BLESSED_FILE, NOT_BLESSED_FILE = "INFRA_BLESSED", "INFRA_NOT_BLESSED"   # TFX's files
REASON_KEY, REQUESTS_KEY, SECONDS_KEY, MODEL_URI_KEY = "reason", "warmup_requests", "seconds", "model_uri"
SERVER_LOG = "serve.log"
NOT_RUN = "infra validation: not run"  # the reason when the Evaluator did not bless the candidate
VERSION = 1                           # the candidate's version in the scratch push directory
STOP_SECONDS = 30.0
START_ATTEMPTS = 2


@dataclasses.dataclass(frozen=True)
class InfraCheck:
    """The settings of one validation."""
    model_name: str
    warmup_examples: int
    timeout_seconds: float
    redacted: Tuple[str, ...] = ()      # features the warm-up rows redact (``pipeline.warmup``)

    @classmethod
    def from_settings(cls, settings) -> "InfraCheck":
        return cls(settings.model_name, settings.warmup_examples, settings.infra_validation_timeout_seconds,
                   tuple(warmup_lib.names_of(warmup_lib.redacted_names(settings))))


@dataclasses.dataclass(frozen=True)
class InfraVerdict:
    blessed: bool
    reason: str = ""                  # why not ("" when blessed)
    requests: int = 0                 # warm-up requests sent
    seconds: float = 0.0


class InfraValidationFailed(Exception):
    """The candidate failed; the message is the reason."""


# ------------------------------------------------------------------ the validation
def validate(model_path: str, examples_uri: str, check: InfraCheck, log_path: Path) -> InfraVerdict:
    """Load the SavedModel at ``model_path`` in ``tfxops serve`` and send it its warm-up
    requests (rows of the Examples at ``examples_uri``); the server's log to ``log_path``."""
    started = time.monotonic()
    deadline = started + check.timeout_seconds
    with tempfile.TemporaryDirectory(prefix="tfxops-infra-") as scratch:
        version_dir = Path(scratch, "serving", check.model_name, str(VERSION))
        storage.copy_tree(model_path, str(version_dir))
        requests = _write_warmup_requests(str(version_dir), examples_uri, check)
        server = ValidationServer(Path(scratch), check.model_name, log_path)
        try:
            server.start(deadline)
            server.check_available()
            server.send(requests, deadline)
        except InfraValidationFailed as exc:
            # one line (TensorFlow's errors span several); the scratch copy's path is gone with it
            reason = " ".join(str(exc).replace(str(version_dir), "<candidate>").split())
            return InfraVerdict(False, f"infra validation: {reason}", len(requests), time.monotonic() - started)
        finally:
            server.stop()
    return InfraVerdict(True, "", len(requests), time.monotonic() - started)


def _write_warmup_requests(version_dir: str, examples_uri: str, check: InfraCheck) -> List:
    """The warm-up file the Pusher will write, written into ``version_dir``; its records
    ([] when the SavedModel cannot be read for its signatures: the server's load then
    says what is wrong with it)."""
    from google.protobuf.message import DecodeError

    examples = warmup_lib.eval_examples(examples_uri, check.warmup_examples, check.redacted)
    try:
        warmup.write_warmup_requests(version_dir, examples, check.model_name)
    except (OSError, DecodeError):
        return []
    return warmup.read_warmup_requests(version_dir)


class ValidationServer:
    """``tfxops serve`` over the scratch push directory ``<scratch>/serving``."""

    def __init__(self, scratch: Path, model_name: str, log_path: Path):
        self.scratch, self.model_name, self.log_path = scratch, model_name, log_path
        self.proc: Optional[subprocess.Popen] = None
        self.rest_port = self.grpc_port = 0

    def start(self, deadline: float) -> None:
        """Start it and wait until it listens (the candidate is loaded by then); once more on
        new ports if it exits first (a free port another process took meanwhile)."""
        for attempt in range(START_ATTEMPTS):
            self._spawn()
            try:
                self._wait_listening(deadline)
                return
            except InfraValidationFailed:
                if self.proc.poll() is None or attempt == START_ATTEMPTS - 1:
                    raise

    def _spawn(self) -> None:
        self.rest_port, self.grpc_port = free_port(), free_port()
        settings = {"serving_dir": self.scratch / "serving", "model_name": self.model_name, "host": "127.0.0.1",
                    "rest_port": self.rest_port, "grpc_port": self.grpc_port, "log_sample_rate": 0,
                    "model_integrity": "off", "poll_seconds": 60}
        command = [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(self.scratch / "home")]
        for key, value in settings.items():
            command += ["--set", f"{key}={value}"]
        environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=environment)

    def _wait_listening(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise InfraValidationFailed(f"tfxops serve exited with code {self.proc.returncode} before "
                                            f"listening (ports {self.rest_port}, {self.grpc_port})")
            try:
                socket.create_connection(("127.0.0.1", self.rest_port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise InfraValidationFailed("tfxops serve did not load the candidate within "
                                    "infra_validation_timeout_seconds")

    def check_available(self) -> None:
        """The candidate is AVAILABLE (it loaded and replayed its warm-up requests)."""
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/{self.model_name}"
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                versions = json.load(answer).get("model_version_status", [])
        except (OSError, ValueError) as exc:
            raise InfraValidationFailed(f"the model status at {url} could not be read ({exc})") from None
        state = next((v for v in versions if str(v.get("version")) == str(VERSION)), {})
        if state.get("state") != "AVAILABLE":
            status = state.get("status", {})
            raise InfraValidationFailed(
                f"the candidate did not load in tfxops serve (state {state.get('state', 'unknown')}): "
                f"{status.get('error_code', 'UNKNOWN')}: {status.get('error_message', '')}")

    def send(self, requests: List, deadline: float) -> None:
        """Each warm-up request as a gRPC call; the first that fails is the reason."""
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for number, record in enumerate(requests):
                kind = record.WhichOneof("log_type")
                method = {"predict_log": stub.Predict, "classify_log": stub.Classify,
                          "regress_log": stub.Regress}.get(kind)
                if method is None:
                    continue
                request = getattr(record, kind).request
                request.model_spec.name = self.model_name
                try:
                    method(request, timeout=max(1.0, deadline - time.monotonic()))
                except grpc.RpcError as exc:
                    raise InfraValidationFailed(
                        f"warm-up request {number} ({kind}, signature "
                        f"'{request.model_spec.signature_name}') answered {exc.code().name}: {exc.details()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------ the component
def mark(blessing, verdict: InfraVerdict, model_uri: str) -> None:
    """The verdict on the InfraBlessing, as TFX's InfraValidator writes it, plus ours."""
    storage.makedirs(blessing.uri)
    storage.write_text(storage.join(blessing.uri, BLESSED_FILE if verdict.blessed else NOT_BLESSED_FILE), "")
    blessing.set_int_custom_property(BLESSED_KEY, int(verdict.blessed))
    blessing.set_string_custom_property(REASON_KEY, verdict.reason)
    blessing.set_int_custom_property(REQUESTS_KEY, verdict.requests)
    blessing.set_float_custom_property(SECONDS_KEY, round(verdict.seconds, 3))
    blessing.set_string_custom_property(MODEL_URI_KEY, model_uri)


@tfx.dsl.components.component
def InfraValidator(
        model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
        examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
        model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
        blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InfraBlessing],
        model_name: tfx.dsl.components.Parameter[str],
        warmup_examples: tfx.dsl.components.Parameter[int],
        timeout_seconds: tfx.dsl.components.Parameter[float],
        code_fingerprint: tfx.dsl.components.Parameter[str] = "",
        redacted_features: tfx.dsl.components.Parameter[str] = ""):
    """The candidate ``model`` loaded in ``tfxops serve`` and sent its warm-up requests
    (``validate``), when the Evaluator blessed it; ``code_fingerprint`` only keys the cache."""
    from tfx.components.util import model_utils
    from tfx.utils import path_utils

    del code_fingerprint
    if not model_utils.is_model_blessed(model_blessing):
        mark(blessing, InfraVerdict(False, f"{NOT_RUN}: the Evaluator did not bless the model"), model.uri)
        return
    check = InfraCheck(model_name, warmup_examples, timeout_seconds, tuple(warmup_lib.names_of(redacted_features)))
    with tempfile.TemporaryDirectory(prefix="tfxops-infra-log-") as logs:
        log_path = Path(logs, SERVER_LOG)
        verdict = validate(path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)),
                           examples.uri, check, log_path)
        kept = storage.join(blessing.uri, SERVER_LOG)
        storage.makedirs(blessing.uri)
        storage.write_text(kept, log_path.read_text(errors="replace"))
    if not verdict.blessed:
        verdict = dataclasses.replace(verdict, reason=f"{verdict.reason}; the server's log: {kept}")
    mark(blessing, verdict, model.uri)


# ------------------------------------------------------------ readers of the verdict
def pusher_refusal(input_dict: Dict[str, List]) -> Optional[str]:
    """Why the Pusher must not push (None: it may, or the InfraValidator is not wired,
    or it did not run because the Evaluator refused: the Pusher's blessing check says so)."""
    if INFRA_BLESSING_KEY not in input_dict:
        return None
    blessing = (input_dict[INFRA_BLESSING_KEY] or [None])[0]
    if blessing is None:
        return "infra validation: no infra blessing for this model"
    model = (input_dict.get(standard_component_specs.MODEL_KEY) or [None])[0]
    judged = blessing.get_string_custom_property(MODEL_URI_KEY)
    if model is not None and judged != model.uri:
        return f"infra validation: the infra blessing judged the model at {judged}, not this model ({model.uri})"
    if blessing.get_int_custom_property(BLESSED_KEY) == 1:
        return None
    reason = blessing.get_string_custom_property(REASON_KEY) or "infra validation: not blessed"
    return None if reason.startswith(NOT_RUN) else reason

