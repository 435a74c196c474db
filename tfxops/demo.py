"""``tfxops demo``: the whole loop on the bundled data, in a few minutes.

1. train on the early trips (before 2015), push a blessed model;
2. serve it (REST + gRPC, embedded server) in the background;
3. replay held-out early trips as live traffic (healthy), then later trips after a
   fare increase (fares and tips x1.5: a price change), with labels fed back;
4. monitor: the healthy window stays quiet; the shifted one raises skew and triggers
   a retrain that includes the new, labelled span; the new model is judged against
   the old, pushed, and the server switches to it without a restart;
5. print the served model's lineage and where the reports are; stop the server.

Every run starts from a fresh ``<home>/demo`` (the previous one is removed).
"""
import csv
import dataclasses
import datetime
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, TextIO

from core import features as F
from core.config import Settings
from serving.request_log import new_request_id

SHIFT_FROM = datetime.datetime(2015, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
PRICE_CHANGE = 1.5
HEALTHY_ROWS = 1200
SHIFTED_ROWS = 2400
ROWS_PER_REQUEST = 8


@dataclasses.dataclass
class DemoData:
    train_dir: Path
    healthy: List[Dict[str, str]]
    shifted: List[Dict[str, str]]


def prepare_data(source_csv: Path, work: Path) -> DemoData:
    """Early trips: 90% to train, 10% held out as healthy traffic. Later trips, with
    fares and tips scaled by PRICE_CHANGE, as shifted traffic."""
    from core.examples import read_csv_rows   # (imports TensorFlow: after the log redirect)

    rows = sorted(read_csv_rows(str(source_csv)), key=lambda r: int(r[F.TIME_KEY]))
    early = [r for r in rows if int(r[F.TIME_KEY]) < SHIFT_FROM]
    late = [r for r in rows if int(r[F.TIME_KEY]) >= SHIFT_FROM]
    train = [r for i, r in enumerate(early) if i % 10]
    healthy = [r for i, r in enumerate(early) if not i % 10][:HEALTHY_ROWS]
    shifted = []
    for row in late[:SHIFTED_ROWS]:
        row = dict(row)
        for key in (F.FARE_KEY, F.LABEL_KEY):
            if row[key] != "":
                row[key] = f"{float(row[key]) * PRICE_CHANGE:.2f}"
        shifted.append(row)
    train_dir = work / "data" / "span-1"
    train_dir.mkdir(parents=True)
    with open(train_dir / "data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=F.CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(train)
    return DemoData(train_dir, healthy, shifted)


class _Out:
    def __init__(self, out: TextIO):
        self.out = out

    def step(self, n: int, text: str) -> None:
        self.out.write(f"\n== {n}. {text}\n")
        self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(f"   {text}\n")
        self.out.flush()

    def progress(self, label: str, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        prefix = "\r" if self.out.isatty() else ""
        if self.out.isatty() or done >= total:
            self.out.write(f"{prefix}   {label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
            self.out.flush()


def replay(client, rows: List[Dict[str, str]], out: _Out, label: str, feedback_csv: Path = None) -> Dict:
    """Send ``rows`` through the server in small requests; write their labels to a
    feedback CSV (request_id, row, tips) as a labelling process would, later."""
    sent, failed, feedback = 0, 0, []
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        chunk = rows[start:start + ROWS_PER_REQUEST]
        request_id = new_request_id()
        serving_rows = [{k: v for k, v in r.items() if k != F.LABEL_KEY} for r in chunk]
        try:
            client.predict_rows(serving_rows, request_id=request_id)
        except Exception:   # noqa: BLE001 - counted and reported
            failed += len(chunk)
        else:
            feedback.extend((request_id, i, r[F.LABEL_KEY]) for i, r in enumerate(chunk))
        sent += len(chunk)
        out.progress(label, sent, len(rows))
    if feedback_csv is not None:
        feedback_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(feedback_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "row", F.LABEL_KEY])
            writer.writerows(feedback)
    return {"sent": sent, "failed": failed}


def _served_version(client) -> int:
    status = client.status()
    available = [int(v["version"]) for v in status.get("model_version_status", [])
                 if v.get("state") == "AVAILABLE"]
    return max(available) if available else None


def _wait_for_version(client, version: int, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _served_version(client) == int(version):
            return True
        time.sleep(0.5)
    return False


def run_demo(settings: Settings, out: TextIO = None) -> Dict:
    """The whole loop; library output goes to ``<home>/demo/demo.log``. Returns what
    happened at each step (``ok`` is true when every step had the expected outcome)."""
    from pipeline.runner import library_output_to

    work = Path(settings.home) / "demo"
    notice = ""
    if work.exists():
        notice = f"(removed the previous demo in {work}: every demo starts fresh)"
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with library_output_to(work / "demo.log") as console:
        o = _Out(console(out or sys.stdout))
        if notice:
            o.line(notice)
        return _loop(settings, work, o)


def _loop(settings: Settings, work: Path, o: _Out) -> Dict:
    from monitoring.run import monitor_once, summary_line
    from pipeline import runner
    from serving.client import RestClient
    from serving.server import BackgroundServer, free_port

    data = prepare_data(Path(settings.data_dir) / "data.csv", work)
    demo = dataclasses.replace(
        settings, home=str(work), data_dir=str(data.train_dir), pipeline_root="", metadata_path="",
        serving_dir="", log_dir="", request_log_dir="", monitor_dir="", feedback_dir="",
        rest_port=free_port(settings.host), grpc_port=free_port(settings.host),
        log_rotate_seconds=1.0, cooldown_seconds=0.0)
    feedback_dir = Path(demo.feedback_dir or Path(demo.home) / "feedback")

    o.step(1, f"train on {sum(1 for _ in open(data.train_dir / 'data.csv')) - 1} trips from 2013-2014")
    first = runner.run(demo, out=o.out)
    if not first.pushed:
        o.line(runner.render(first))
        o.line("the first model was not pushed: see the summary above; stopping")
        return {"ok": False, "step": "train", "first": dataclasses.asdict(first)}
    auc = next((m["value"] for m in first.metrics if m["metric"] == "auc"), None)
    o.line(f"blessed (AUC {auc:.4f}) and pushed: version {first.pushed_version}")

    o.step(2, f"serve it: REST http://{demo.host}:{demo.rest_port}  gRPC {demo.host}:{demo.grpc_port}")
    with BackgroundServer(demo):
        client = RestClient(demo.host, demo.rest_port, demo.model_name)
        if not _wait_for_version(client, first.pushed_version):
            o.line("the server did not load the model in time; stopping")
            return {"ok": False, "step": "serve"}
        o.line(f"serving version {_served_version(client)}")

        o.step(3, "live traffic, part 1: held-out trips like the training data")
        healthy = replay(client, data.healthy, o, "healthy traffic", feedback_dir / "healthy.csv")
        time.sleep(demo.log_rotate_seconds + 1.0)   # the request log closes its file
        o.step(4, "monitor the first window")
        quiet = monitor_once(demo)
        o.line(summary_line(quiet))

        o.step(5, f"live traffic, part 2: 2015-2016 trips after a x{PRICE_CHANGE} fare increase")
        shifted = replay(client, data.shifted, o, "shifted traffic", feedback_dir / "shifted.csv")
        time.sleep(demo.log_rotate_seconds + 1.0)
        o.step(6, "monitor the second window (it retrains when the policy says so)")
        loud = monitor_once(demo, out=o.line)
        decision = loud.get("decision") or {}
        new_version = (decision.get("outcome") or {}).get("pushed_version")
        switched = False
        if new_version:
            switched = _wait_for_version(client, new_version)
            trip = next(r for r in data.shifted if r["payment_type"] == "Credit Card")
            answer = client.predict_rows([{k: v for k, v in trip.items() if k != F.LABEL_KEY}])
            o.line(f"the server now serves version {_served_version(client)} (no restart); "
                   f"P(big tip) for a shifted credit-card trip: {answer[0]:.3f}")
        client.close()

    o.step(7, "where the served model came from")
    graph = _print_lineage(demo, o)
    o.step(8, "summary")
    quiet_triggered = bool((quiet.get("decision") or {}).get("triggered"))
    o.line(f"model v1: {first.pushed_version}, trained on 2013-2014 trips")
    o.line(f"healthy window: {healthy['sent']} rows, {'TRIGGERED' if quiet_triggered else 'quiet (no trigger)'}")
    o.line(f"shifted window: {shifted['sent']} rows, decision: {decision.get('action')} "
           f"({decision.get('because', '')})")
    o.line(f"model v2: {new_version or '-'}, served without a restart: {'yes' if switched else 'no'}")
    o.line(f"monitoring reports: {quiet.get('report', {}).get('html')}, {loud.get('report', {}).get('html')}")
    o.line(f"lineage graph of the served model: {graph}")
    o.line(f"everything is under {work}")
    ok = (not quiet_triggered and decision.get("action") == "retrain" and bool(switched)
          and healthy["failed"] == 0 and shifted["failed"] == 0)
    if not ok:
        o.line("the loop did not go as expected: see the steps above and the logs under " + str(work))
    return {"ok": ok, "home": str(work), "first_version": first.pushed_version, "healthy": healthy,
            "shifted": shifted, "quiet": quiet, "loud": loud, "new_version": new_version,
            "switched": switched, "lineage_graph": str(graph), "settings": demo}


def _print_lineage(settings: Settings, o: _Out) -> Path:
    """The served model's lineage as a tree here, and as an HTML graph file."""
    from lineage import render
    from lineage.model import model_lineage

    report, graph = model_lineage(settings, "serving")
    o.out.write(render.model_text(report) + "\n")
    page = Path(settings.home) / "lineage-serving.html"
    page.write_text(render.model_html(report, graph) + "\n")
    return page
