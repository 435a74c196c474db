"""`tfxops run` on unusable input: a clear message, exit code 2, and nothing written
or pushed (these checks run before the pipeline starts)."""
import subprocess
import sys

import pytest

from core import features as F
from tests.conftest import REPO, write_rows


def _run(tmp_path, data_dir, *extra):
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "tfxops.cli", "run", "--home", str(home), "--data", str(data_dir), *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    return result, home


def _assert_refused(result, home, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr
    for word in words:
        assert word in message, message
    assert not home.exists(), "a refused run must not write anything"


def test_missing_data_directory(tmp_path):
    result, home = _run(tmp_path, tmp_path / "nope")
    _assert_refused(result, home, "does not exist", str(tmp_path / "nope"), "--data")


def test_directory_without_csv(tmp_path):
    (tmp_path / "data").mkdir()
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, "no .csv file")


def test_empty_csv(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("")
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, "train.csv is empty")


def test_header_only_csv(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text(",".join(F.CSV_COLUMNS) + "\n")
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, "no data rows")


def test_missing_label_column(tmp_path, taxi_rows):
    columns = [c for c in F.CSV_COLUMNS if c != F.LABEL_KEY]
    write_rows(tmp_path / "data" / "train.csv", taxi_rows[:50], columns)
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, f"no label column '{F.LABEL_KEY}'")


def test_columns_differ_from_schema(tmp_path, taxi_rows):
    rows = [dict(r, surge="1.5") for r in taxi_rows[:50]]
    columns = [c for c in F.CSV_COLUMNS if c != "company"] + ["surge"]
    write_rows(tmp_path / "data" / "train.csv", rows, columns)
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, "missing column(s): company", "unexpected column(s): surge")


@pytest.mark.parametrize("column,value,kind", [("fare", "cheap", "a number"),
                                               ("trip_start_hour", "7.5", "an integer")])
def test_wrong_type(tmp_path, taxi_rows, column, value, kind):
    rows = [dict(r) for r in taxi_rows[:50]]
    rows[10][column] = value
    write_rows(tmp_path / "data" / "train.csv", rows, F.CSV_COLUMNS)
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, "line 12", f"'{column}'", repr(value), kind)


def test_unknown_setting(tmp_path, small_data_dir):
    result, home = _run(tmp_path, small_data_dir, "--set", "train_stepz=5")
    _assert_refused(result, home, "unknown setting 'train_stepz'")


def test_csv_that_is_not_utf8(tmp_path, taxi_rows):
    """A Latin-1 byte in a UTF-8 file: the pre-flight names the file, line, byte offset
    and value (it was a traceback and exit 1)."""
    rows = [dict(r) for r in taxi_rows[:50]]
    rows[6]["company"] = "SENTINEL"
    path = write_rows(tmp_path / "data" / "train.csv", rows, F.CSV_COLUMNS)
    data = path.read_bytes().replace(b"SENTINEL", b"Caf\xe9 Cab")
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    result, home = _run(tmp_path, tmp_path / "data")
    _assert_refused(result, home, str(path), "line 8", f"byte {offset}", "0xe9", "UTF-8")
    assert "Traceback" not in result.stderr and "UnicodeDecodeError" not in result.stderr
