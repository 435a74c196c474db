"""The two Beam services a portable run talks to: a job service and an EXTERNAL
worker pool (the worker protocol of Flink, Spark and Kubernetes sidecars).

``beam_job_endpoint`` / ``beam_worker_pool`` name running ones (``host:port``);
left empty, ``services`` starts them here for the run, each on a free port
(a worker pool only for a job service started here: a remote job service cannot
reach this machine's ``localhost``, so it needs ``beam_worker_pool`` or an
``--environment_type`` of its own in ``beam_args``):

    python -m apache_beam.runners.portability.local_job_service_main --port P
    python -m apache_beam.runners.worker.worker_pool_main --service_port Q

The worker pool gets ``core.env.worker_environment()``: the image's variables and
what locates this Python, nothing else of the launcher's, so a run proves that
the image's environment is all a worker needs. Services started here are stopped
(process group, ports freed) however the run ends: on return, on an exception,
on Ctrl-C and on SIGTERM; and they die with the launcher if it is killed.
"""
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

from core.config import ConfigError, Settings
from core.env import worker_environment
from core.ports import free_port

START_SECONDS = 120.0     # a service started here must answer within this long
ANSWER_SECONDS = 10.0     # a service the settings name must answer within this long
STOP_SECONDS = 10.0       # SIGTERM, then SIGKILL after this long
# Beam's PortableRunner opens the job's state and message streams with its
# --job_server_timeout (60 s by default) as their gRPC deadline, so a job running
# longer fails with DEADLINE_EXCEEDED: the deadline is set past any job's length.
JOB_STREAM_SECONDS = 7 * 24 * 3600
JOB_SERVICE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL = "apache_beam.runners.worker.worker_pool_main"


class EndpointNotAnswering(ConfigError):
    """A Beam service named by the settings does not answer (a bad setting)."""


class ServiceFailed(RuntimeError):
    """A Beam service started here did not come up (the run fails)."""


@dataclasses.dataclass(frozen=True)
class Endpoints:
    job_endpoint: str    # host:port of the Beam job service
    worker_pool: str     # host:port of the EXTERNAL worker pool


@contextlib.contextmanager
def services(settings: Settings, log_stem: Path) -> Iterator[Endpoints]:
    """The job service and worker pool for one run: the settings' own, or started
    here (their output in ``<log_stem>-job-service.log`` and
    ``<log_stem>-worker-pool.log``) and stopped when the block ends.

    A job endpoint of the settings must answer from here. A worker pool of the
    settings is asked only when the job service runs here: a remote job service
    (a Flink or Spark cluster) resolves the address on its own hosts, as with a
    pool beside each task manager at ``localhost:50000``.
    """
    if settings.beam_job_endpoint:
        _check_remote_workers(settings)
        _check_answers("beam_job_endpoint", settings.beam_job_endpoint, _job_service_answers)
    elif settings.beam_worker_pool:
        _check_answers("beam_worker_pool", settings.beam_worker_pool, _worker_pool_answers)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_unwinds())
        staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="tfxops-beam-staging-"))
        job = settings.beam_job_endpoint or stack.enter_context(_started(
            "job service", [JOB_SERVICE, "--staging_dir", staging, "--port"], dict(os.environ),
            Path(f"{log_stem}-job-service.log"), _job_service_answers))
        if settings.beam_worker_pool or settings.beam_job_endpoint:
            pool = settings.beam_worker_pool    # empty: the workers' environment is in beam_args
        else:
            pool = stack.enter_context(_started(
                "worker pool", [WORKER_POOL, "--service_port"], worker_environment(),
                Path(f"{log_stem}-worker-pool.log"), _worker_pool_answers))
        yield Endpoints(job_endpoint=job, worker_pool=pool)


def runner_arguments(job_endpoint, worker_pool, worker_image: str) -> List:
    """Beam's arguments for the PortableRunner: submitting to the job service at
    ``job_endpoint``, its SDK workers from the EXTERNAL worker pool at ``worker_pool``,
    which runs ``worker_image`` (``--sdk_container_image`` also tells TFX its code is
    in the workers' image, so it builds no sdist of itself per component), and a
    job service timeout no job outlasts (``JOB_STREAM_SECONDS``). The addresses are
    strings or TFX placeholders; ``beam_args`` go after these, and win."""
    return ["--runner=PortableRunner",
            "--job_endpoint=" + job_endpoint,
            "--environment_type=EXTERNAL",
            "--environment_config=" + worker_pool,
            "--sdk_container_image=" + worker_image,
            f"--job_server_timeout={JOB_STREAM_SECONDS}"]


def _check_remote_workers(settings: Settings) -> None:
    """A remote job service needs workers it reaches: a worker pool started here
    would be this machine's ``localhost``."""
    if settings.beam_worker_pool or any(str(argument).startswith("--environment_type")
                                        for argument in settings.beam_args):
        return
    raise ConfigError(
        f"beam_job_endpoint={settings.beam_job_endpoint!r} is a job service elsewhere, which cannot reach a "
        "worker pool on this machine: set beam_worker_pool (host:port of a pool the job service reaches, "
        "e.g. localhost:50000 for a pool beside each task manager) or give the workers' environment in "
        "beam_args (--environment_type=DOCKER --environment_config=IMAGE)")


# ------------------------------------------------------------------ start and stop
@contextlib.contextmanager
def _started(name: str, module_args: List[str], environment: Dict[str, str], log_path: Path,
             answers: Callable[[str, float], bool]) -> Iterator[str]:
    """``python -m <module_args> <free port>`` in its own process group, until the
    block ends; yields its ``localhost:port`` once ``answers`` says it does."""
    port = free_port()
    address = f"localhost:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args, str(port)], env=environment, cwd=os.getcwd(),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        _wait_until_answering(name, address, process, log_path, answers)
        logging.info("started the Beam %s on %s (pid %d; its output: %s)", name, address, process.pid, log_path)
        yield address
    finally:
        _stop_process_group(process)


def _wait_until_answering(name: str, address: str, process: subprocess.Popen, log_path: Path,
                          answers: Callable[[str, float], bool]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceFailed(
                f"the local Beam {name} exited at start (code {process.returncode}; was {address} "
                f"taken meanwhile? then run again); its output: {log_path}")
        if answers(address, timeout=2.0):
            return
    raise ServiceFailed(f"the local Beam {name} did not answer on {address} within "
                        f"{START_SECONDS:.0f} s (a loaded machine?); its output: {log_path}")


def _stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (the service and the workers it started),
    then, after ``STOP_SECONDS`` at most, SIGKILL to whatever of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up before fork: the child only calls it


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, even by SIGKILL."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises SystemExit (so ``finally`` clauses stop
    the services) where Python would otherwise die on the spot. Only in the main
    thread, and only when SIGTERM has its default action."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ------------------------------------------------------------------------- probes
def _check_answers(setting: str, address: str, answers) -> None:
    if not answers(address, timeout=ANSWER_SECONDS):
        what = "Beam job service" if setting == "beam_job_endpoint" else "Beam worker pool"
        module = JOB_SERVICE if setting == "beam_job_endpoint" else WORKER_POOL
        raise EndpointNotAnswering(
            f"no {what} answers at {setting}={address!r} within {ANSWER_SECONDS:.0f} s. Start one "
            f"(python -m {module} ...) or leave {setting} empty to start one for the run")


def _job_service_answers(address: str, timeout: float) -> bool:
    """The job service lists its jobs (a real answer, not just an open port)."""
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    return _answers(address, timeout, lambda channel: beam_job_api_pb2_grpc.JobServiceStub(channel)
                    .GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=timeout))


def _worker_pool_answers(address: str, timeout: float) -> bool:
    """The worker pool answers a StopWorker for a worker it never started (a no-op)."""
    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

    return _answers(address, timeout, lambda channel: beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
                    .StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="tfxops-probe"), timeout=timeout))


def _answers(address: str, timeout: float, call) -> bool:
    import grpc

    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            call(channel)
            return True
        except (grpc.FutureTimeoutError, grpc.RpcError):
            return False
