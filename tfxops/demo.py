"""``tfxops demo``: the whole loop on the bundled data, in a few minutes.

1. train on the early trips (before 2015), push a blessed model that passed the
   fairness gate (its per-slice results printed) with its model card;
2. serve it (REST + gRPC, embedded server) in the background;
3. replay held-out early trips as live traffic (healthy), then later trips after a
   fare increase (fares and tips x1.5: a price change), with labels fed back;
4. monitor: the healthy window stays quiet; the shifted one raises skew and triggers
   a retrain that includes the new, labelled span; the new model is judged against
   the old, pushed, and the server switches to it without a restart;
   each window also reports bias drift and feature attribution drift;
5. score the same later trips (held out: no version trained on them) with the
   first version and the retrained one, side by side with what really happened;
6. print the served model's lineage, its model card, the audit trail (verified)
   and where the reports are; stop the server.

Every run starts from a fresh ``<home>/demo`` (the previous one is removed).
"""
import csv
import dataclasses
import datetime
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

from core import features as F
from core.config import Settings
from monitoring.result import MonitorResult
from core.request_log import new_request_id

SHIFT_FROM = datetime.datetime(2015, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
PRICE_CHANGE = 1.5
HEALTHY_ROWS = 1200
SHIFTED_ROWS = 2400
PROBE_ROWS = 240       # later trips after the shifted ones: scored by both versions, trained on by none
ROWS_PER_REQUEST = 8


@dataclasses.dataclass
class DemoData:
    train_dir: Path
    healthy: List[Dict[str, str]]
    shifted: List[Dict[str, str]]
    probe: List[Dict[str, str]]    # as shifted, never sent with labels: no version learns from them


def prepare_data(source_csv: Path, work: Path) -> DemoData:
    """Early trips: 90% to train, 10% held out as healthy traffic. Later trips, with
    fares and tips scaled by PRICE_CHANGE, as shifted traffic, and the next ones as
    the probe both versions are compared on."""
    from core.examples import read_csv_rows   # (imports TensorFlow: after the log redirect)

    rows = sorted(read_csv_rows(str(source_csv)), key=lambda r: int(r[F.TIME_KEY]))
    early = [r for r in rows if int(r[F.TIME_KEY]) < SHIFT_FROM]
    late = [r for r in rows if int(r[F.TIME_KEY]) >= SHIFT_FROM]
    train = [r for i, r in enumerate(early) if i % 10]
    healthy = [r for i, r in enumerate(early) if not i % 10][:HEALTHY_ROWS]
    shifted = []
    for row in late[:SHIFTED_ROWS + PROBE_ROWS]:
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
    return DemoData(train_dir, healthy, shifted[:SHIFTED_ROWS], shifted[SHIFTED_ROWS:])


class StepPrinter:
    """The demo's numbered steps, indented lines and progress bars on a terminal."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def step(self, n: int, text: str) -> None:
        self.stream.write(f"\n== {n}. {text}\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        self.stream.write(f"   {text}\n")
        self.stream.flush()

    def progress(self, label: str, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        prefix = "\r" if self.stream.isatty() else ""
        if self.stream.isatty() or done >= total:
            self.stream.write(f"{prefix}   {label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
            self.stream.flush()


def replay(client, rows: List[Dict[str, str]], printer: StepPrinter, label: str,
           feedback_csv: Path = None) -> Dict:
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
        printer.progress(label, sent, len(rows))
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
    from core.env import library_output_to

    work = Path(settings.home) / "demo"
    notice = ""
    if work.exists():
        notice = f"(removed the previous demo in {work}: every demo starts fresh)"
        shutil.rmtree(work)
    work.mkdir(parents=True)
    terminal = out or sys.stdout          # (sys.stdout goes to the log inside)
    with library_output_to(work / "demo.log") as console:
        printer = StepPrinter(console(terminal))
        if notice:
            printer.line(notice)
        return _loop(settings, work, printer)


@dataclasses.dataclass
class Watched:
    """Steps 3-6: the traffic replayed and what the monitor made of each window."""
    healthy: Dict                  # replay(): rows sent, failed
    shifted: Dict
    quiet: MonitorResult           # the healthy window
    loud: MonitorResult            # the shifted window
    new_version: Optional[str]     # what the retrain pushed
    switched: bool                 # the server serves it, without a restart


def _loop(settings: Settings, work: Path, printer: StepPrinter) -> Dict:
    data = prepare_data(Path(settings.data_dir) / "data.csv", work)
    demo = _demo_settings(settings, work, data)
    first = _train(demo, data, printer)
    if not first.pushed:
        return {"ok": False, "step": "train", "first": dataclasses.asdict(first)}
    watched = _serve_and_watch(demo, data, first, printer)
    if watched is None:
        return {"ok": False, "step": "serve"}
    printer.step(7, "where the served model came from, and its model card")
    graph, card = _print_lineage(demo, printer)
    printer.step(8, "the audit trail (tfxops audit)")
    trail_intact = _print_audit(demo, printer)
    ok = _print_summary(demo, first, watched, graph, card, printer) and trail_intact
    return {"ok": ok, "home": str(work), "first_version": first.pushed_version, "healthy": watched.healthy,
            "shifted": watched.shifted, "quiet": watched.quiet, "loud": watched.loud,
            "new_version": watched.new_version, "switched": watched.switched, "lineage_graph": str(graph),
            "model_card": card, "audit_trail_intact": trail_intact, "settings": demo}


def _demo_settings(settings: Settings, work: Path, data: DemoData) -> Settings:
    """Everything under ``work``, fresh ports, a request log that closes its files
    fast, no cool-down."""
    from core.ports import free_port

    return dataclasses.replace(
        settings, home=str(work), data_dir=str(data.train_dir), pipeline_root="", metadata_path="",
        serving_dir="", log_dir="", request_log_dir="", monitor_dir="", feedback_dir="",
        rest_port=free_port(settings.host), grpc_port=free_port(settings.host),
        log_rotate_seconds=1.0, cooldown_seconds=0.0)


def _train(demo: Settings, data: DemoData, printer: StepPrinter):
    """Step 1: the pipeline on the early trips; its run summary."""
    from pipeline import runner

    printer.step(1, f"train on {sum(1 for _ in open(data.train_dir / 'data.csv')) - 1} trips from 2013-2014")
    first = runner.run_pipeline(demo, out=printer.stream)
    if not first.pushed:
        printer.line(runner.render(first))
        printer.line("the first model was not pushed: see the summary above; stopping")
        return first
    auc = next((m["value"] for m in first.metrics if m["metric"] == "auc"), None)
    printer.line(f"blessed (AUC {auc:.4f}) and pushed: version {first.pushed_version}")
    for line in runner.render_fairness(first):
        printer.line(line.strip() if line.startswith("  fairness") else line)
    return first


def _serve_and_watch(demo: Settings, data: DemoData, first, printer: StepPrinter) -> Optional[Watched]:
    """Steps 2-6: serve the first model, replay both traffics, monitor each window,
    and follow the retrained version onto the server. None if the server never
    loaded the first model."""
    from monitoring.monitor import monitor_once
    from serving.client import RestClient
    from serving.server import BackgroundServer

    feedback_dir = demo.feedback_path
    printer.step(2, f"serve it: REST http://{demo.host}:{demo.rest_port}  gRPC {demo.host}:{demo.grpc_port}")
    with BackgroundServer(demo):
        client = RestClient(demo.host, demo.rest_port, demo.model_name)
        if not _wait_for_version(client, first.pushed_version):
            printer.line("the server did not load the model in time; stopping")
            return None
        printer.line(f"serving version {_served_version(client)}")

        printer.step(3, "live traffic, part 1: held-out trips like the training data")
        healthy = replay(client, data.healthy, printer, "healthy traffic", feedback_dir / "healthy.csv")
        time.sleep(demo.log_rotate_seconds + 1.0)   # the request log closes its file
        printer.step(4, "monitor the first window")
        quiet = monitor_once(demo)
        printer.line(quiet.summary_line())
        for line in responsible_ai_lines(quiet):
            printer.line(line)

        printer.step(5, f"live traffic, part 2: 2015-2016 trips after a x{PRICE_CHANGE} fare increase")
        shifted = replay(client, data.shifted, printer, "shifted traffic", feedback_dir / "shifted.csv")
        first_scores = score(client, data.probe)      # unlabelled: the retrain cannot learn from them
        time.sleep(demo.log_rotate_seconds + 1.0)
        printer.step(6, "monitor the second window (it retrains when the policy says so)")
        loud = monitor_once(demo, out=printer.line)
        for line in responsible_ai_lines(loud):
            printer.line(line)
        new_version, switched = _follow_new_version(client, loud, printer)
        if switched:
            printer.line(f"the same {len(data.probe)} later trips (no version trained on them), before and after:")
            for line in probe_lines(data.probe, first_scores, score(client, data.probe)):
                printer.line(line)
        client.close()
    return Watched(healthy, shifted, quiet, loud, new_version, switched)


def _follow_new_version(client, loud: MonitorResult, printer: StepPrinter):
    """The version the shifted window's retrain pushed, and whether the server
    switched to it."""
    outcome = loud.decision.outcome if loud.decision is not None else None
    new_version = getattr(outcome, "pushed_version", None)
    if not new_version:
        return new_version, False
    switched = _wait_for_version(client, new_version)
    printer.line(f"the server now serves version {_served_version(client)} (no restart)")
    return new_version, switched


def score(client, rows: List[Dict[str, str]]) -> List[float]:
    """P(big tip) for each row (its label left out), from the version the server serves."""
    scores = []
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        chunk = rows[start:start + ROWS_PER_REQUEST]
        scores.extend(client.predict_rows([{k: v for k, v in r.items() if k != F.LABEL_KEY} for r in chunk]))
    return scores


def big_tip(row: Dict[str, str]) -> bool:
    """What really happened: the label rule (core.features.is_big_tipper) on the row."""
    tips = float(row[F.LABEL_KEY]) if row[F.LABEL_KEY] != "" else float("nan")
    return bool(F.is_big_tipper(tips, float(row[F.FARE_KEY] or 0)))


def probe_lines(rows: List[Dict[str, str]], first: List[float], second: List[float]) -> List[str]:
    """A few of ``rows`` scored by both versions next to what happened, then both
    versions over all of them: how often each is right (P >= 0.5 for a big tip), and
    its mean P(big tip) for the trips that were big tips and for those that were not."""
    picks = _examples(rows)
    lines = [f"  {'payment':<12} {'miles':>6} {'fare':>7} {'tip':>6}  {'big tip?':<9} "
             f"{'v1 P(big tip)':>13} {'v2 P(big tip)':>13}"]
    for i in picks:
        row = rows[i]
        lines.append(f"  {row['payment_type']:<12} {float(row['trip_miles'] or 0):>6.1f} "
                     f"{float(row[F.FARE_KEY] or 0):>7.2f} {float(row[F.LABEL_KEY] or 0):>6.2f}  "
                     f"{'yes' if big_tip(row) else 'no':<9} {first[i]:>13.3f} {second[i]:>13.3f}")
    truth = [big_tip(row) for row in rows]
    for name, scores in (("v1", first), ("v2", second)):
        right = sum((p >= 0.5) == t for p, t in zip(scores, truth)) / max(len(rows), 1)
        lines.append(f"  {name} over all {len(rows)}: right on {right:.0%}; mean P(big tip) "
                     f"{_mean(scores, truth, True):.2f} for the big tips, {_mean(scores, truth, False):.2f} "
                     f"for the others")
    lines.append("  (a cash tip is not recorded in this data: a cash trip is never a big tip, and both "
                 "versions learned that)")
    return lines


def _examples(rows: List[Dict[str, str]]) -> List[int]:
    """Indexes of a few telling rows: two credit-card big tips, a credit-card trip
    that was not one, a cash trip (as many as there are)."""
    wanted = [("Credit Card", True), ("Credit Card", True), ("Credit Card", False), ("Cash", False)]
    picked = []
    for payment, big in wanted:
        found = next((i for i, r in enumerate(rows) if i not in picked and r["payment_type"] == payment
                      and big_tip(r) == big), None)
        if found is not None:
            picked.append(found)
    return picked


def _mean(scores: List[float], truth: List[bool], which: bool) -> float:
    chosen = [p for p, t in zip(scores, truth) if t == which]
    return sum(chosen) / len(chosen) if chosen else float("nan")


def _print_summary(demo: Settings, first, watched: Watched, graph: Path, card: Optional[str],
                   printer: StepPrinter) -> bool:
    """Step 9; whether the loop went as expected (a quiet healthy window, a retrain on
    the shifted one, the new version served, no failed request)."""
    printer.step(9, "summary")
    quiet_triggered = bool(watched.quiet.decision is not None and watched.quiet.decision.triggered)
    decision = watched.loud.decision
    printer.line(f"model v1: {first.pushed_version}, trained on 2013-2014 trips")
    printer.line(f"healthy window: {watched.healthy['sent']} rows, "
                 f"{'TRIGGERED' if quiet_triggered else 'quiet (no trigger)'}")
    printer.line(f"shifted window: {watched.shifted['sent']} rows, decision: "
                 f"{decision.action if decision else None} ({decision.because if decision else ''})")
    printer.line(f"model v2: {watched.new_version or '-'}, served without a restart: "
                 f"{'yes' if watched.switched else 'no'}")
    printer.line(f"monitoring reports: {_report_html(watched.quiet)}, {_report_html(watched.loud)}")
    printer.line(f"lineage graph of the served model: {graph}")
    printer.line(f"model card of the served model: {card or '-'}")
    printer.line(f"everything is under {demo.home}")
    ok = (not quiet_triggered and decision is not None and decision.action == "retrain" and watched.switched
          and watched.healthy["failed"] == 0 and watched.shifted["failed"] == 0)
    if not ok:
        printer.line("the loop did not go as expected: see the steps above and the logs under " + demo.home)
    return ok


def responsible_ai_lines(result: MonitorResult) -> List[str]:
    """Each judged version's bias drift and feature attribution drift, in words."""
    lines = []
    for version in result.versions:
        bias, attribution = version.bias, version.attribution
        if bias is not None:
            verdict = ("; ".join(bias.findings()) if bias.flagged else
                       f"no slice of {', '.join(bias.features)} moved" if bias.available else
                       f"not judged ({bias.reason})")
            lines.append(f"bias drift, version {version.version}: {verdict}")
        if attribution is not None:
            verdict = (attribution.finding() if attribution.drifted else
                       f"none: NDCG {attribution.ndcg:.3f} >= {attribution.threshold:g}; top movers: "
                       + ", ".join(shift.line() for shift in attribution.top_movers()[:3])
                       if attribution.available else f"not judged ({attribution.reason})")
            lines.append(f"attribution drift, version {version.version}: {verdict}")
    return lines


def _report_html(result: MonitorResult) -> Optional[str]:
    return result.report.html if result.report is not None else None


def _print_audit(settings: Settings, printer: StepPrinter) -> bool:
    """The whole trail as ``tfxops audit`` prints it, then ``--verify``'s verdict."""
    from core import audit
    from tfxops.audit_cli import entry_text, verdict

    path = audit.audit_file(settings)
    for entry in audit.entries(path):
        printer.stream.write(entry_text(entry) + "\n")
    result = audit.verify(path, audit.signing_key(settings))
    for line in verdict(path, result, settings.audit_key_env).splitlines():
        printer.line(line)
    return result.ok


def _print_lineage(settings: Settings, printer: StepPrinter) -> Tuple[Path, Optional[str]]:
    """The served model's lineage as a tree here, and as an HTML graph file; the
    path of its model card."""
    from lineage import render
    from lineage.model import model_lineage

    report, graph = model_lineage(settings, "serving")
    printer.stream.write(render.model_text(report) + "\n")
    page = Path(settings.home) / "lineage-serving.html"
    page.write_text(render.model_html(report, graph) + "\n")
    return page, report.get("model_card")
