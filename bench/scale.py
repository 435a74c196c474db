"""Scale benchmark (run by hand): the pipeline and the monitor as the data grows
15k -> 150k -> 1.5M rows, on each way tfxops runs Beam, beside TFX's own taxi
example on the same data, all in one session.

    .venv/bin/python bench/scale.py [--sizes 1,10,100] [--timeout-minutes 40]

Data: the bundled 15,002 taxi rows, then copies of them with jitter (fare, tips,
miles, seconds scaled by one random factor per row, so tip/fare and the label stay;
coordinates moved a few hundred metres; timestamps moved by whole weeks, so the
hour and weekday columns stay true). ``--sizes`` counts copies: 1, 10, 100 are
15,002, 150,020 and 1,500,200 rows.

Pipeline, each run a fresh ``tfxops run`` in its own home (cold):
  in_process     defaults: Beam's DirectRunner in memory, one process
  multi_process  DirectRunner multi_processing, --direct_num_workers=2
  portable       --runner portable: Beam's local job service and an EXTERNAL
                 worker pool. That job service runs one SDK worker per job
                 whatever the options say (docs/bench-scale.md: why)
  reference      TFX's taxi_pipeline_native_keras.py from the tfx wheel as shipped
                 (BeamDagRunner, multi_processing, one worker per core)
Monitor, ``tfxops monitor --dry-run`` (the same window each time) over as many
logged single-row requests as the pipeline had rows: ``--engine local`` (forked
decoders), and ``--engine beam`` on the three Beam set-ups above.

Every run: wall time, CPU seconds of its whole process tree (children included),
peak RSS of the tree, the other processes' CPU on the machine meanwhile, and per
component seconds from MLMD. A run past ``--timeout-minutes`` is killed and
reported with the components it finished. Results go to WORK/results.json after
each run and to docs/bench-scale.md (the hand-written analysis after the marker
line is kept). Not part of the tests.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from core.env import set_process_environment  # noqa: E402
set_process_environment()
from bench.pipeline import REFERENCE_DRIVER, component_times, machine  # noqa: E402
from core import config  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, PYTHONWARNINGS="ignore")
BASE_ROWS = REPO / "data" / "taxi" / "data.csv"
MARKER = "<!-- analysis: written by hand, kept when the tables above are regenerated -->"
TWO_WORKERS = "--direct_num_workers=2"
MULTI = f"beam_args=--direct_running_mode=multi_processing,{TWO_WORKERS}"
PIPELINE_MODES = {
    "in_process": [],
    "multi_process": ["--set", MULTI],
    "portable": ["--runner", "portable"],
}
MONITOR_MODES = {
    "local": ["--engine", "local"],
    "beam_in_process": ["--engine", "beam"],
    "beam_multi_process": ["--engine", "beam", "--set", MULTI],
    "beam_portable": ["--engine", "beam", "--set", "beam_runner=portable"],
}
RENAMED = {"BaselineAwareEvaluator": "Evaluator"}
COMPONENTS = ["CsvExampleGen", "StatisticsGen", "SchemaGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
              "Transform", "Trainer", "BaselineModelResolver", "Resolver", "Evaluator", "Pusher"]


# ------------------------------------------------------------------------------- data
def make_data(copies: int, out_dir: Path, seed: int = 0) -> int:
    """``copies`` x the bundled rows (the first copy as it is) as out_dir/data.csv."""
    base = pd.read_csv(BASE_ROWS, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    parts = [base] + [_jittered(base, rng) for _ in range(copies - 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.concat(parts, ignore_index=True).to_csv(out_dir / "data.csv", index=False)
    return len(base) * copies


def _jittered(base: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frame = base.copy()
    n = len(frame)
    scale = np.exp(rng.normal(0.0, 0.05, n))                  # one factor per row: tip/fare stays
    for column, digits in (("fare", 2), ("tips", 2), ("trip_miles", 2)):
        frame[column] = _apply(frame[column], lambda v: np.round(v * scale, digits), digits)
    frame["trip_seconds"] = _apply(frame["trip_seconds"], lambda v: np.round(v * scale), 0)
    for column in ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude"):
        frame[column] = _apply(frame[column], lambda v: np.round(v + rng.normal(0.0, 0.002, n), 6), 6)
    weeks = rng.integers(-4, 5, n) * 7 * 86400
    frame["trip_start_timestamp"] = _apply(frame["trip_start_timestamp"], lambda v: v + weeks, 0)
    return frame


def _apply(column: pd.Series, change, digits: int) -> pd.Series:
    """``change`` on the numbers of a text column; empty cells stay empty."""
    present = column != ""
    values = change(pd.to_numeric(column.where(present, "0")).to_numpy(dtype=float))
    text = [f"{v:.{digits}f}" for v in values]
    return column.where(~present, pd.Series(text, index=column.index))


# -------------------------------------------------------------------------- measuring
class Run:
    """One command in its own session: wall, tree CPU (reaped children included),
    peak tree RSS, other processes' CPU meanwhile; killed past ``timeout``."""

    def __init__(self, cmd: List[str], log_path: Path, timeout: float, cwd: Optional[Path] = None):
        self.cmd, self.log_path, self.timeout, self.cwd = cmd, log_path, timeout, cwd
        self.peak = 0
        self.seen_cpu: Dict[int, float] = {}     # pid -> its own CPU seconds when last seen

    def measure(self) -> Dict:
        busy_before = _machine_busy_seconds()
        start = time.monotonic()
        with open(self.log_path, "w") as log:
            proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                    cwd=self.cwd, start_new_session=True)
        done = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(proc.pid, done), daemon=True)
        sampler.start()
        killer = threading.Timer(self.timeout, lambda: _kill_group(proc.pid))
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        killer.cancel()
        done.set()
        sampler.join()
        _kill_group(proc.pid)          # anything of the run left behind
        cpu = max(usage.ru_utime + usage.ru_stime, sum(self.seen_cpu.values()))
        other = max(0.0, _machine_busy_seconds() - busy_before - cpu)
        return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(self.peak / 2**20),
                "other_cpu_cores": round(other / wall, 2), "exit": os.waitstatus_to_exitcode(status),
                "killed": wall >= self.timeout}

    def _sample(self, pid: int, done: threading.Event) -> None:
        while not done.wait(0.25):
            try:
                tree = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
            except psutil.Error:
                continue
            rss = 0
            for process in tree:
                try:
                    with process.oneshot():
                        rss += process.memory_info().rss
                        times = process.cpu_times()
                        self.seen_cpu[process.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the runs
def run_pipeline(mode: str, data_dir: Path, work: Path, timeout: float) -> Dict:
    home = work / mode
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    if mode == "reference":
        return _run_reference(home, data_dir, timeout)
    cmd = [PY, "-m", "tfxops.cli", "run", "--home", str(home), "--data", str(data_dir), "--json",
           *PIPELINE_MODES[mode]]
    result = Run(cmd, home / "run.log", timeout, cwd=REPO).measure()
    result["components"] = _components(config.load({"home": str(home)}).metadata_file)
    return result


def _run_reference(home: Path, data_dir: Path, timeout: float) -> Dict:
    import tfx
    source = Path(tfx.__file__).parent / "examples" / "chicago_taxi_pipeline" / "taxi_utils_native_keras.py"
    (home / "module").mkdir()
    module_file = home / "module" / source.name
    shutil.copy(source, module_file)
    driver = home / "driver.py"
    driver.write_text(REFERENCE_DRIVER)
    result = Run([PY, str(driver), str(home), str(module_file), str(data_dir)], home / "run.log", timeout).measure()
    result["components"] = _components(home / "metadata.db")
    return result


def _components(metadata_path: Path) -> Dict:
    try:
        return {RENAMED.get(name, name): list(value) for name, value in component_times(metadata_path).items()}
    except Exception as error:          # a run killed before MLMD had a run context
        return {"error": str(error)[:200]}


def run_monitor(mode: str, home: Path, timeout: float, log_path: Path) -> Dict:
    cmd = [PY, "-m", "tfxops.cli", "monitor", "--home", str(home), "--dry-run", "--json", *MONITOR_MODES[mode]]
    stdout = log_path.with_suffix(".json")
    result = Run(["/bin/sh", "-c", " ".join(map(_quote, cmd)) + f" > {_quote(str(stdout))}"],
                 log_path, timeout, cwd=REPO).measure()
    try:
        document = json.loads(stdout.read_text())
        result.update(rows=document.get("rows"), monitor_s=document.get("seconds"),
                      timings=document.get("timings"),
                      decision=(document.get("decision") or {}).get("action"),
                      flagged=sorted({f for v in document.get("versions", []) for f in v.get("flagged_features", [])}))
    except (OSError, ValueError):
        result["rows"] = None
    return result


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


def monitor_home(source_home: Path, rows: int, work: Path) -> Path:
    """A home whose metadata is a copy of ``source_home``'s and whose request logs are
    ``rows`` single-row requests to its pushed model (bench/monitoring.py's writer)."""
    from bench.monitoring import write_logs
    from core import mlmd
    from core.examples import read_csv_rows

    source = config.load({"home": str(source_home)})
    version = int(mlmd.pushed_models(mlmd.open_store(source))[0].version)
    home = work / f"monitor-{rows}"
    shutil.rmtree(home, ignore_errors=True)
    settings = config.load({"home": str(home)})
    settings.metadata_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source.metadata_file, settings.metadata_file)
    shutil.copytree(source.model_push_dir, settings.model_push_dir)
    write_logs(settings.request_logs_path, rows, version, list(read_csv_rows(str(BASE_ROWS))))
    return home


# ---------------------------------------------------------------------------- report
def save(results: Dict, work: Path, out: Path) -> None:
    (work / "results.json").write_text(json.dumps(results, indent=2))
    kept = ""
    if out.exists() and MARKER in out.read_text():
        kept = out.read_text().split(MARKER, 1)[1]
    out.write_text(render(results) + "\n" + MARKER + kept)


def render(r: Dict) -> str:
    m = r["machine"]
    sizes = [s for s in r["sizes"] if str(s) in r["pipeline"]]
    lines = [
        "# Scale benchmark", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"measured {m['date']} by `bench/scale.py` (all runs below in one session, sizes in order, the "
        "set-ups of one size one after the other).", "",
        *[f"Rerun at {x['when']} in the same session, replacing the first run's rows: pipeline "
          f"`{x['pipeline'] or '-'}`, monitor `{x['monitor'] or '-'}`, sizes `{x['sizes']}` (why: below)."
          for x in r.get("reruns", [])], "",
        "Rows: the bundled taxi sample and jittered copies of it (`bench/scale.py` says how). Pipeline: "
        "`tfxops run`, cold, in a fresh home per run, 600 training steps whatever the size (the reference: "
        "1000), so the Trainer is a fixed cost. *cpu s* counts the whole process tree (Beam workers and "
        "services included: the kernel's accounting of reaped children, and processes sampled every 0.25 s "
        "for those that outlive their parent, such as the portable runner's workers); *other cores* is what the rest of the machine used meanwhile (0 = quiet).", "",
        "## Pipeline", "",
        "| rows | set-up | wall s | cpu s | cpu/wall | peak RSS MiB | other cores | exit |",
        "|---:|---|---:|---:|---:|---:|---:|---|"]
    for size in sizes:
        for mode, run in r["pipeline"][str(size)].items():
            lines.append(f"| {size:,} | {mode} | {_wall(run)} | {run['cpu_s']} | "
                         f"{run['cpu_s'] / max(run['wall_s'], 0.1):.2f} | {run['peak_rss_mib']} | "
                         f"{run['other_cpu_cores']} | {_exit(run)} |")
    lines += ["", "Per component, seconds (MLMD execution times; `>` a component still running when the run "
              "was stopped):", ""]
    modes = sorted({mode for size in sizes for mode in r["pipeline"][str(size)]}, key=_mode_order)
    header = [f"{mode} {size:,}" for mode in modes for size in sizes if mode in r["pipeline"][str(size)]]
    lines += ["| component | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    seen = {name for size in sizes for run in r["pipeline"][str(size)].values() for name in run.get("components", {})}
    for name in COMPONENTS + sorted(seen - set(COMPONENTS) - {"error"}):
        cells = [_component_cell(r["pipeline"][str(size)][mode], name)
                 for mode in modes for size in sizes if mode in r["pipeline"][str(size)]]
        if any(c != "-" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(sizes) < 2:
        return "\n".join(lines + _monitor_section(r)) + "\n"
    lines += ["", "Growth: time per 1,000 extra rows between sizes (the marginal cost; a linear cost keeps it "
              "constant), and the fixed part (the 15k run's time minus 15k rows at the first marginal cost):", "",
              "| set-up | " + " | ".join(f"s / 1k rows, {a:,} -> {b:,}" for a, b in zip(sizes, sizes[1:]))
              + " | fixed s |", "|---|" + "---:|" * len(sizes)]
    for mode in modes:
        walls = [r["pipeline"][str(s)].get(mode) for s in sizes]
        lines.append(f"| {mode} | " + _growth_cells(sizes, walls) + " |")
    lines += _monitor_section(r)
    return "\n".join(lines) + "\n"


def _monitor_section(r: Dict) -> List[str]:
    sizes = [s for s in r["sizes"] if str(s) in r.get("monitor", {})]
    if not sizes:
        return []
    lines = ["", "## Monitor", "",
             "`tfxops monitor --dry-run --json` over as many logged single-row requests as rows above (one "
             "PredictionLog per request, 10,000 per file), the same window for every engine; *monitor s* is the "
             "pass's own time (reading, statistics, checks, report), the rest of *wall* is start-up.", "",
             "| requests | engine | wall s | monitor s | rows/s | cpu s | peak RSS MiB | other cores | rows seen | "
             "decision |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in sizes:
        for mode, run in r["monitor"][str(size)].items():
            seconds = run.get("monitor_s")
            rate = f"{size / seconds:,.0f}" if seconds else "-"
            lines.append(f"| {size:,} | {mode} | {_wall(run)} | {seconds if seconds is not None else '-'} | "
                         f"{rate} | {run['cpu_s']} | {run['peak_rss_mib']} | {run['other_cpu_cores']} | "
                         f"{run.get('rows')} | {run.get('decision')} |")
    modes = sorted({mode for size in sizes for mode in r["monitor"][str(size)]})
    if len(sizes) < 2:
        return lines
    lines += ["", "| engine | " + " | ".join(f"s / 1k rows, {a:,} -> {b:,}" for a, b in zip(sizes, sizes[1:]))
              + " | fixed s |", "|---|" + "---:|" * len(sizes)]
    for mode in modes:
        runs = [r["monitor"][str(s)].get(mode) for s in sizes]
        lines.append(f"| {mode} | " + _growth_cells(sizes, runs) + " |")
    return lines


def _growth_cells(sizes: List[int], runs: List[Optional[Dict]]) -> str:
    cells, first_rate = [], None
    for (a, b), (ra, rb) in zip(zip(sizes, sizes[1:]), zip(runs, runs[1:])):
        if not ra or not rb or ra["exit"] != 0 or rb["exit"] != 0:
            cells.append("-")
            continue
        rate = (rb["wall_s"] - ra["wall_s"]) / ((b - a) / 1000)
        first_rate = rate if first_rate is None else first_rate
        cells.append(f"{rate:.3f}")
    fixed = "-"
    if runs[0] and runs[0]["exit"] == 0 and first_rate is not None:
        fixed = f"{runs[0]['wall_s'] - first_rate * sizes[0] / 1000:.1f}"
    return " | ".join(cells + [fixed])


def _mode_order(mode: str) -> int:
    order = list(PIPELINE_MODES) + ["reference"]
    return order.index(mode) if mode in order else len(order)


def _wall(run: Dict) -> str:
    return f"> {run['wall_s']}" if run["killed"] else str(run["wall_s"])


def _exit(run: Dict) -> str:
    return "stopped at the time limit" if run["killed"] else str(run["exit"])


def _component_cell(run: Dict, name: str) -> str:
    value = run.get("components", {}).get(name)
    if not value or not isinstance(value, list):
        return "-"
    seconds, state = value
    if state == "CACHED":
        return "cached"
    return f"> {seconds:.0f}" if state == "RUNNING" else f"{seconds:.1f}"


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="copies of the 15,002 taxi rows, in order")
    parser.add_argument("--pipeline", default="in_process,multi_process,portable,reference")
    parser.add_argument("--monitor", default="local,beam_in_process,beam_multi_process,beam_portable")
    parser.add_argument("--timeout-minutes", type=float, default=40.0, help="a run longer than this is stopped")
    parser.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "docs" / "bench-scale.md"))
    parser.add_argument("--merge", help="results.json of an earlier run: these runs replace or join its own")
    parser.add_argument("--monitor-home", help="the home whose pushed model the monitor runs watch "
                        "(default: the first size's in_process run)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="tfxops-bench-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout_minutes * 60
    results = {"machine": machine(), "sizes": [], "pipeline": {}, "monitor": {}}
    if args.merge:
        results = json.loads(Path(args.merge).read_text())
        results.setdefault("reruns", []).append({"when": time.strftime("%H:%M UTC", time.gmtime()),
                                                 "pipeline": args.pipeline, "monitor": args.monitor,
                                                 "sizes": args.sizes})
    pipeline_modes = [m for m in args.pipeline.split(",") if m]
    monitor_modes = [m for m in args.monitor.split(",") if m]
    for copies in [int(c) for c in args.sizes.split(",")]:
        data_dir = work / f"data-{copies}"
        rows = make_data(copies, data_dir)
        print(f"== {rows:,} rows in {data_dir}", flush=True)
        if rows not in results["sizes"]:
            results["sizes"].append(rows)
        runs = results["pipeline"].setdefault(str(rows), {})
        for mode in pipeline_modes:
            runs[mode] = run_pipeline(mode, data_dir, work / f"pipeline-{rows}", timeout)
            print(f"   pipeline {mode}: {runs[mode]['wall_s']} s, exit {runs[mode]['exit']}", flush=True)
            save(results, work, Path(args.out))
        if monitor_modes:
            source = Path(args.monitor_home) if args.monitor_home else \
                work / f"pipeline-{results['sizes'][0]}" / "in_process"
            _monitor_size(results, rows, monitor_modes, source, work, timeout, Path(args.out))
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"wrote {args.out}; raw results and logs in {work}")
    return 0


def _monitor_size(results: Dict, rows: int, modes: List[str], source: Path, work: Path, timeout: float,
                  out: Path) -> None:
    if not config.load({"home": str(source)}).metadata_file.exists():
        print("   monitor: no pushed model from the first in_process run; skipped", flush=True)
        return
    home = monitor_home(source, rows, work)
    _warm_baselines(home, source, work, timeout)
    runs = results["monitor"].setdefault(str(rows), {})
    for mode in modes:
        runs[mode] = run_monitor(mode, home, timeout, home / f"{mode}.log")
        print(f"   monitor {mode}: {runs[mode]['wall_s']} s, rows {runs[mode].get('rows')}, "
              f"exit {runs[mode]['exit']}", flush=True)
        save(results, work, out)
    shutil.rmtree(config.load({"home": str(home)}).request_logs_path, ignore_errors=True)


def _warm_baselines(home: Path, source: Path, work: Path, timeout: float) -> None:
    """The monitor computes the served model's outputs on its eval split once and caches
    them (``<monitor_dir>/baselines``): computed once here, copied into every monitor home,
    so no measured pass pays it."""
    cache = work / "baselines"
    if not cache.exists():
        warm = monitor_home(source, 2000, work)
        run_monitor("local", warm, timeout, work / "monitor-warm-up.log")
        shutil.copytree(config.load({"home": str(warm)}).monitor_path / "baselines", cache)
    shutil.copytree(cache, config.load({"home": str(home)}).monitor_path / "baselines", dirs_exist_ok=True)


if __name__ == "__main__":
    sys.exit(main())
