"""Actions: a new data span from labelled requests, a pipeline rerun, a re-push.

Spans and the retraining data directory live under ``<monitor_dir>`` (never in
the repository's data/):

    <monitor_dir>/spans/span-<window>.csv     labelled requests of one window,
                                              CsvExampleGen's columns
    <monitor_dir>/retrain_data/               what the rerun's CsvExampleGen reads:
        original-<name>.csv -> <data_dir>/<name>.csv   (retrain_include_original)
        span-<window>.csv   -> ../spans/span-<window>.csv
"""
import csv
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from core import features as F
from core.config import Settings


def write_span(rows: List[Dict], spans_dir: Path, window_id: str) -> Optional[Path]:
    """Labelled rows (dicts of raw values, ``tips`` included) as a CSV span."""
    if not rows:
        return None
    spans_dir.mkdir(parents=True, exist_ok=True)
    path = spans_dir / f"span-{window_id}.csv"
    tmp = spans_dir / f".{path.name}.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=F.CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in F.CSV_COLUMNS})
    os.replace(tmp, path)
    return path


def retrain_data_dir(settings: Settings, monitor_dir: Path) -> Path:
    """Rebuild ``<monitor_dir>/retrain_data`` from the original CSVs and every span."""
    target = monitor_dir / "retrain_data"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    sources = []
    if settings.retrain_include_original:
        sources += [(f"original-{p.name}", p) for p in sorted(Path(settings.data_dir).glob("*.csv"))]
    sources += [(p.name, p) for p in sorted((monitor_dir / "spans").glob("span-*.csv"))]
    for name, source in sources:
        try:
            os.symlink(source.resolve(), target / name)
        except OSError:
            shutil.copyfile(source, target / name)
    return target


def retrain(settings: Settings, data_dir: Path, out=None) -> Dict:
    """Rerun the whole pipeline on ``data_dir``; a summary of what it did."""
    from pipeline import preflight, runner

    out = out or sys.stdout
    try:
        summary = runner.run(settings, out=out, data_dir=str(data_dir))
    except preflight.PreflightError as exc:
        return {"ok": False, "error": f"pre-flight: {exc}"}
    result = {"ok": summary.ok, "run_id": summary.run_id, "blessed": summary.blessed,
              "pushed": summary.pushed, "pushed_version": summary.pushed_version,
              "data_dir": str(data_dir), "log": summary.log_path}
    if not summary.ok:
        result["error"] = f"{summary.failed_node}: {summary.error}"
    return result


def repush(settings: Settings, model_path: str) -> Dict:
    """Publish a previously blessed model again, atomically, as a new version."""
    from core.pushdir import publish_atomically

    version = publish_atomically(model_path, str(settings.model_push_dir))
    return {"ok": True, "pushed": True, "pushed_version": version,
            "pushed_destination": str(Path(settings.model_push_dir) / version)}
