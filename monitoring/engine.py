"""How a window's log files become traffic and statistics per served version: the
seam between the monitor and the engine that reads them (``monitor_engine``).

* ``local`` (the default, one machine): ``monitoring.traffic.read_window``, in this
  process or forked workers whose TFDV accumulators are merged;
* ``beam``: ``monitoring.beam_engine``, the same reading as a Beam job (per-file
  reader, decoding by the schema, TFDV's ``GenerateStatistics`` sliced by model
  version, the feedback join by request id), run with the pipeline's Beam
  settings: ``beam_args`` (DirectRunner without any), and with
  ``beam_runner=portable`` Beam's PortableRunner against the job service and
  EXTERNAL worker pool of ``pipeline.portable`` (the settings' own, or started
  for the pass), ``beam_args`` after them.

Both give a ``traffic.WindowTraffic`` (or raise ``traffic.EngineError``): the same
counts, files read and unreadable files, and statistics per version; the window,
baselines, checks, policy, actions, report and MLMD record stay in the monitor's
process, whatever the engine.
"""
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator, List, Optional, Protocol

from core.config import Settings
from monitoring import bias as bias_lib, traffic as traffic_lib, window as window_lib

LOCAL, BEAM = "local", "beam"


class TrafficEngine(Protocol):
    def read_window(self, win: window_lib.Window, feedback: traffic_lib.Feedback, schema) -> traffic_lib.WindowTraffic:
        """Every part of ``win``, read and decoded (``schema``: the decoding hint of
        ``traffic.read_window``), per served version, feedback labels joined."""


@dataclasses.dataclass
class LocalEngine:
    """This machine: ``workers`` forked processes (1: this one); ``slicing``: the
    sensitive slices each version tallies (``monitoring.bias``)."""
    workers: int
    slicing: Optional[bias_lib.SliceSpec] = None

    def read_window(self, win: window_lib.Window, feedback: traffic_lib.Feedback, schema) -> traffic_lib.WindowTraffic:
        return traffic_lib.read_window(win, feedback, self.workers, schema, self.slicing)


def for_settings(settings: Settings, files: List) -> TrafficEngine:
    """The engine ``monitor_engine`` names, for a window of ``files``."""
    slicing = bias_lib.SliceSpec.of(settings)
    if settings.monitor_engine == BEAM:
        from monitoring.beam_engine import BeamEngine

        work_dir = os.path.join(str(settings.monitor_path), "beam")
        if settings.beam_runner == "portable":
            return BeamEngine(list(settings.beam_args), work_dir,
                              lambda: portable_runner(settings, Path(work_dir) / "services"), slicing)
        return BeamEngine(list(settings.beam_args), work_dir, slicing=slicing)
    return LocalEngine(traffic_lib.workers_for(settings, files), slicing)


@contextlib.contextmanager
def portable_runner(settings: Settings, log_stem: Path) -> Iterator[List[str]]:
    """Beam's arguments for the PortableRunner on ``pipeline.portable``'s services
    (their output beside ``log_stem``), for as long as the block runs;
    ``traffic.EngineError`` naming the service that does not answer or start."""
    from core.config import ConfigError
    from pipeline import portable

    with contextlib.ExitStack() as stack:
        try:
            endpoints = stack.enter_context(portable.services(settings, log_stem))
        except (ConfigError, portable.ServiceFailed) as exc:
            raise traffic_lib.EngineError(f"the portable runner's services: {exc}") from None
        yield portable.runner_arguments(endpoints.job_endpoint, endpoints.worker_pool, settings.beam_worker_image)
