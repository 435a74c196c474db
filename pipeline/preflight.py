"""Checks on the input CSVs before a run starts, with messages a person can act on.

They catch what would otherwise surface minutes later as a library stack trace:
a missing data directory, no CSV files, an empty CSV, bytes that are not UTF-8,
columns that differ from the schema (a missing label included), values that do
not parse as the schema's type. ExampleValidator and DataGate still check every row against the full schema.
"""
import csv
import os
from pathlib import Path
from typing import List

from core import features as F
from core import storage


class PreflightError(ValueError):
    """The input data cannot be used; the message names the file and the fix."""


def _csv_files(data_dir: Path) -> List[Path]:
    if not data_dir.exists():
        raise PreflightError(
            f"data directory '{data_dir}' does not exist. Point --data (or TFXOPS_DATA_DIR) "
            f"at a directory holding the training CSV file(s).")
    if not data_dir.is_dir():
        raise PreflightError(
            f"'{data_dir}' is a file; --data takes the directory that holds the CSV file(s).")
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    csvs = [p for p in files if p.suffix.lower() == ".csv"]
    if not csvs:
        raise PreflightError(
            f"no .csv file in '{data_dir}' (found: {', '.join(p.name for p in files) or 'nothing'}). "
            f"Put the training data there as CSV with a header row.")
    others = [p.name for p in files if p.suffix.lower() != ".csv"]
    if others:
        raise PreflightError(
            f"'{data_dir}' holds files that are not CSV ({', '.join(others)}); CsvExampleGen "
            f"reads every file in the directory. Move them elsewhere.")
    return csvs


def _check_type(path: Path, line: int, column: str, value: str) -> None:
    kind = F.column_type(column)
    if value == "" or kind == "string":
        return
    try:
        if kind == "int":
            int(value)
        else:
            float(value)
    except ValueError:
        raise PreflightError(
            f"{path}, line {line}, column '{column}': {value!r} is not {'an integer' if kind == 'int' else 'a number'} "
            f"as the schema requires. Fix the value, or the column's type in schema/schema.pbtxt "
            f"and core/features.py.") from None


def check_csv(path: Path, max_rows: int) -> int:
    """Checks one CSV; returns the number of data rows read."""
    if path.stat().st_size == 0:
        raise PreflightError(f"{path} is empty. A training CSV needs a header row and data rows.")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            rows = _check_rows(path, reader, _check_header(path, reader), max_rows)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if rows == 0:
        raise PreflightError(f"{path} has a header but no data rows.")
    return rows


def _check_header(path: Path, reader) -> List[str]:
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise PreflightError(f"{path} has no header row. The first line must name the columns: "
                             f"{', '.join(F.CSV_COLUMNS)}.")
    header = [h.strip() for h in header]
    missing = [c for c in F.CSV_COLUMNS if c not in header]
    extra = [c for c in header if c not in F.CSV_COLUMNS]
    if F.LABEL_KEY in missing:
        raise PreflightError(
            f"{path} has no label column '{F.LABEL_KEY}'. Training needs it; add the column "
            f"(or change LABEL_KEY in core/features.py for other data).")
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s): {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s): {', '.join(extra)}")
        raise PreflightError(
            f"{path} does not match the schema ({'; '.join(parts)}). The columns must be: "
            f"{', '.join(F.CSV_COLUMNS)} (schema/schema.pbtxt, core/features.py).")
    return header


def _check_rows(path: Path, reader, header: List[str], max_rows: int) -> int:
    rows = 0
    for line, row in enumerate(reader, start=2):
        if rows >= max_rows:
            break
        if not row:
            continue
        if len(row) != len(header):
            raise PreflightError(
                f"{path}, line {line}: {len(row)} fields where the header has {len(header)}. "
                f"Check quoting and separators on that line.")
        for column, value in zip(header, row):
            _check_type(path, line, column, value.strip())
        rows += 1
    return rows


def _not_utf8(path: Path) -> PreflightError:
    """The error for the first byte of ``path`` that is not UTF-8: file, line, offset
    from the start of the file, and the byte's value."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return PreflightError(
                    f"{path}, line {number}, byte {offset + exc.start}: 0x{raw[exc.start:exc.end].hex()} is "
                    f"not valid UTF-8 ({exc.reason}). Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 "
                    f"{path.name}` if it is Latin-1).")
            offset += len(raw)
    return PreflightError(f"{path} is not valid UTF-8. Save it as UTF-8.")


def check_data_dir(data_dir: str, max_rows: int = 100_000) -> int:
    """Checks every CSV in ``data_dir``; returns the number of rows checked. A URI
    (``gs://``...) is not read here: CsvExampleGen reads and checks it where it runs."""
    if storage.is_uri(data_dir):
        return 0
    return sum(check_csv(path, max_rows) for path in _csv_files(Path(os.path.expanduser(data_dir))))
