"""Shared fixtures: the bundled data, small samples of it, and one end-to-end run
of the pipeline on a small sample that several test modules read."""
import csv
import io
from pathlib import Path

import pytest

from core.env import set_process_environment

set_process_environment()
from core import features as F
from core import config

REPO = Path(__file__).resolve().parents[1]
TAXI_CSV = REPO / "data" / "taxi" / "data.csv"
SMALL_ROWS = 3000
E2E_OVERRIDES = {"train_steps": "120", "eval_steps": "10", "batch_size": "64",
                 "slice_features": "trip_start_hour"}
# A pipeline run whose test reads neither the InfraValidator's verdict nor the MLflow mirror
# (each a subprocess or an import of seconds per run) turns them off with these.
WITHOUT_INFRA_VALIDATION_AND_MIRROR = {"infra_validation": "false", "mlflow_tracking": "false"}


def read_rows(path=TAXI_CSV):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows, columns=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = columns or list(rows[0].keys())
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def taxi_rows():
    return read_rows()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, taxi_rows):
    directory = tmp_path_factory.mktemp("small_data")
    write_rows(directory / "data.csv", taxi_rows[:SMALL_ROWS], F.CSV_COLUMNS)
    return directory


@pytest.fixture(scope="session")
def e2e_settings(tmp_path_factory, small_data_dir):
    """The end-to-end home: its first run is infra-validated and mirrored to MLflow
    (tests/e2e/test_infra_validation.py and tests/tracking read both)."""
    home = tmp_path_factory.mktemp("e2e_home")
    return config.load(dict(E2E_OVERRIDES, home=str(home), data_dir=str(small_data_dir),
                            infra_validation="true", mlflow_tracking="true"))


@pytest.fixture(scope="session")
def first_run(e2e_settings):
    """The pipeline's first run on the small sample (every component executes)."""
    from pipeline import runner

    out = io.StringIO()
    summary = runner.run_pipeline(e2e_settings, out=out)
    summary.progress_text = out.getvalue()
    return summary
