"""Fixtures for the lineage tests: the end-to-end store (tests/conftest.py's
``first_run``), a cached rerun, a run on different data read while it runs, and a
real MariaDB server with the pipeline run against it."""
import contextlib
import io
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import E2E_OVERRIDES, REPO, WITHOUT_INFRA_VALIDATION_AND_MIRROR, write_rows
from tests.lineage import mariadb
from core import config, mlmd

OTHER_ROWS = slice(3000, 6000)


def lineage_cli(*argv) -> tuple:
    """Run ``tfxops lineage ...`` in this process: (exit code, stdout, stderr)."""
    from tfxops import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["lineage", *map(str, argv)])
        except SystemExit as exc:      # argparse rejecting the arguments
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def cached_rerun(first_run, e2e_settings):
    """The pipeline again on the same data and settings: every component cached."""
    from pipeline import runner

    summary = runner.run_pipeline(e2e_settings, out=io.StringIO())
    assert summary.ok, summary.error
    return summary


class _Reader(threading.Thread):
    """Reads the store over and over (as `tfxops lineage runs` and `model` do)
    while a pipeline process writes to it; keeps every error."""

    def __init__(self, settings, version):
        super().__init__(daemon=True)
        self.settings, self.version = settings, version
        self.stop = threading.Event()
        self.reads, self.errors, self.statuses = 0, [], set()

    def run(self):
        from lineage import runs, trace
        while not self.stop.is_set():
            try:
                store = mlmd.open_store(self.settings)
                rows = mlmd.with_retry(lambda: runs.runs_table(store, self.settings.pipeline_name, 3))
                self.statuses.add(rows[0]["status"])
                mlmd.with_retry(lambda: trace.model_report(store, self.settings, self.version,
                                                           with_metrics=False))
                self.reads += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                self.errors.append(repr(exc))
            time.sleep(1.0)


@pytest.fixture(scope="session")
def other_data_run(cached_rerun, first_run, e2e_settings, taxi_rows, tmp_path_factory):
    """The pipeline on a different 3,000-row slice, in a separate process, with the
    lineage read in a loop while it writes to the same store. It pushes into a push
    directory of its own: the session's home keeps serving the first run's version
    only, whichever tests run after this one (tests/e2e/test_pipeline.py)."""
    data_dir = tmp_path_factory.mktemp("other_data")
    from core import features as F
    write_rows(data_dir / "data.csv", taxi_rows[OTHER_ROWS], F.CSV_COLUMNS)
    store = mlmd.open_store(e2e_settings)
    before = {r.name for r in mlmd.pipeline_runs(store, e2e_settings.pipeline_name)}
    del store

    command = [sys.executable, "-m", "tfxops.cli", "run", "--home", str(e2e_settings.home),
               "--data", str(data_dir), "--set", f"serving_dir={tmp_path_factory.mktemp('other_serving')}"]
    for key, value in dict(E2E_OVERRIDES, mlflow_tracking="false").items():   # the same nodes as the first run's
        command += ["--set", f"{key}={value}"]
    reader = _Reader(e2e_settings, first_run.pushed_version)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader.start()
    try:
        output, _ = process.communicate(timeout=900)
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert process.returncode == 0, output[-3000:]
    store = mlmd.open_store(e2e_settings)
    new = [r.name for r in mlmd.pipeline_runs(store, e2e_settings.pipeline_name) if r.name not in before]
    assert len(new) == 1, new
    return {"run_id": new[0], "data_dir": data_dir, "reader": reader, "output": output}


# -------------------------------------------------------------------- MySQL
MYSQL_DATABASE = "tfxops_lineage_test"
WRITER_PASSWORD_ENV = "TFXOPS_TEST_MLMD_WRITER_PASSWORD"
READER_PASSWORD_ENV = "TFXOPS_TEST_MLMD_READER_PASSWORD"


@pytest.fixture(scope="session")
def mysql_server(tmp_path_factory):
    """A MariaDB server (see tests/lineage/mariadb.py); skipped, with the reason,
    only when none can be started."""
    workdir = tmp_path_factory.mktemp("mariadb")
    try:
        with mariadb.server(workdir) as server:
            yield server
    except mariadb.Unavailable as exc:
        pytest.skip(f"no MySQL-compatible server: {exc}")


@pytest.fixture(scope="session")
def mysql_run(mysql_server, small_data_dir, tmp_path_factory):
    """The pipeline's small end-to-end case with MLMD in MariaDB; returns (summary,
    writer settings, read-only settings)."""
    from pipeline import runner

    os.environ[WRITER_PASSWORD_ENV] = "writer-secret"
    os.environ[READER_PASSWORD_ENV] = "reader-secret"
    mysql_server.create_database(MYSQL_DATABASE, "mlmd_writer", "writer-secret",
                                 reader="mlmd_reader", reader_password="reader-secret")
    home = tmp_path_factory.mktemp("mysql_home")
    common = dict(E2E_OVERRIDES, **WITHOUT_INFRA_VALIDATION_AND_MIRROR, home=str(home),
                  data_dir=str(small_data_dir), metadata_backend="mysql",
                  mysql_host=mysql_server.host, mysql_port=str(mysql_server.port),
                  mysql_database=MYSQL_DATABASE)
    writer = config.load(dict(common, mysql_user="mlmd_writer", mysql_password_env=WRITER_PASSWORD_ENV))
    reader = config.load(dict(common, mysql_user="mlmd_reader", mysql_password_env=READER_PASSWORD_ENV))
    summary = runner.run_pipeline(writer, out=io.StringIO())
    assert summary.ok, summary.error
    yield summary, writer, reader
    for name in (WRITER_PASSWORD_ENV, READER_PASSWORD_ENV):
        os.environ.pop(name, None)


def settings_args(settings) -> list:
    """CLI arguments that select the same store and push directory as ``settings``."""
    args = ["--home", settings.home]
    for key in ("pipeline_name", "model_name", "metadata_backend", "mysql_host", "mysql_port",
                "mysql_database", "mysql_user", "mysql_password_env"):
        args += ["--set", f"{key}={getattr(settings, key)}"]
    if settings.metadata_path:
        args += ["--set", f"metadata_path={settings.metadata_path}"]
    return args


