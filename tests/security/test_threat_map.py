"""SECURITY.md's threat map holds what it claims: every row names a test that exists, every
ATLAS ID and name is ATLAS's (the vendored subset of ATLAS's data, so this runs offline),
and every setting and default it names is core.config's."""
import ast
import dataclasses
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest
import yaml

from core import config
from tests.conftest import REPO

SECURITY = REPO / "SECURITY.md"
ATLAS_SUBSET = REPO / "third_party" / "mitre_atlas" / "atlas-subset.yaml"
STAGES = ("data ingestion", "training", "evaluation and push", "model store", "serving", "request logs",
          "monitoring and the feedback/retrain loop", "dependencies and images")
COLUMNS = ("Stage", "ATLAS technique", "tfxops control", "Setting (default)", "Test",
           "Not covered / the operator must")
ATLAS_ID = re.compile(r"`(AML\.[TM]\d{4}(?:\.\d{3})?)`")
TECHNIQUE = re.compile(r"^`(AML\.T\d{4}(?:\.\d{3})?)` (.+)$")
SETTING = re.compile(r"^`([a-z][a-z0-9_]*)`(?: = `(.+)`)?$")
TEST = re.compile(r"^`(tests/[\w/]+\.py)::((?:\w+::)?test_\w+)`$")


class Row(NamedTuple):
    stage: str
    techniques: List[str]
    control: str
    settings: List[str]
    tests: List[str]
    not_covered: str


def cells(line: str) -> List[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def threat_map(text: str) -> List[Row]:
    """The rows of the table under '## Threat map'; each multi-valued cell split at <br>."""
    section = text.split("\n## Threat map\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert tuple(cells(lines[0])) == COLUMNS, cells(lines[0])
    rows = []
    for line in lines[2:]:
        stage, techniques, control, settings, tests, not_covered = cells(line)
        split = (lambda cell: [] if cell == "—" else cell.split("<br>"))
        rows.append(Row(stage, split(techniques), control, split(settings), split(tests), not_covered))
    return rows


@lru_cache(maxsize=1)
def atlas() -> Dict[str, str]:
    """{ID: full name} (a sub-technique as 'Parent: Name', as ATLAS shows it) of the subset."""
    data = yaml.safe_load(ATLAS_SUBSET.read_text())
    names = {entry["id"]: entry["name"] for entry in data["techniques"] + data["mitigations"]}
    for entry in data["techniques"]:
        if "subtechnique-of" in entry:
            names[entry["id"]] = f"{names[entry['subtechnique-of']]}: {entry['name']}"
    return names


def functions_of(path: Path) -> set:
    """'name' and 'Class::name' of each test function of a test file, read with ast."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef):
            found.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return found


def named_test_problems(row: Row) -> List[str]:
    if not row.tests:
        return [f"a {row.stage} row names no test: {row.control[:60]}"]
    problems = []
    for cell in row.tests:
        match = TEST.match(cell)
        if not match:
            problems.append(f"not `tests/<file>.py::<test function>`: {cell}")
        elif not (REPO / match.group(1)).is_file():
            problems.append(f"{match.group(1)} does not exist")
        elif match.group(2) not in functions_of(REPO / match.group(1)):
            problems.append(f"{cell}: no such test function")
    return problems


def technique_problems(row: Row) -> List[str]:
    problems = []
    for cell in row.techniques:
        match = TECHNIQUE.match(cell)
        if not match:
            problems.append(f"not `AML.T####[.###]` Name: {cell}")
        elif match.group(1) not in atlas():
            problems.append(f"{match.group(1)} is not in ATLAS's data (third_party/mitre_atlas)")
        elif match.group(2) != atlas()[match.group(1)]:
            problems.append(f"{match.group(1)} is '{atlas()[match.group(1)]}' in ATLAS, not '{match.group(2)}'")
    return problems


def setting_problems(row: Row, defaults: config.Settings) -> List[str]:
    known = {field.name for field in dataclasses.fields(config.Settings)}
    problems = []
    for cell in row.settings:
        match = SETTING.match(cell)
        if not match:
            problems.append(f"not `setting` or `setting` = `default`: {cell}")
            continue
        name, default = match.groups()
        if name not in known:
            problems.append(f"SECURITY.md names setting '{name}', which core/config.py does not have")
        elif default is not None and json.loads(default) != getattr(defaults, name):
            problems.append(f"SECURITY.md says {name} defaults to {default}; "
                            f"core/config.py: {getattr(defaults, name)!r}")
    return problems


@pytest.fixture(scope="module")
def rows() -> List[Row]:
    return threat_map(SECURITY.read_text())


def test_every_stage_has_rows_and_every_row_is_complete(rows):
    assert {row.stage for row in rows} == set(STAGES)
    for row in rows:
        assert row.techniques and row.control and row.not_covered, row.stage


def test_every_row_names_tests_that_exist(rows):
    assert [problem for row in rows for problem in named_test_problems(row)] == []


def test_every_technique_is_an_atlas_id_with_its_atlas_name(rows):
    assert [problem for row in rows for problem in technique_problems(row)] == []


def test_every_atlas_id_on_the_page_is_followed_by_its_atlas_name():
    text = SECURITY.read_text()
    ids = list(ATLAS_ID.finditer(text))
    assert len(ids) > 20
    for match in ids:
        expected = atlas().get(match.group(1))
        assert expected, f"{match.group(1)} is not in ATLAS's data (third_party/mitre_atlas)"
        assert text[match.end():].lstrip().startswith(expected), f"{match.group(1)} is not named '{expected}'"


def test_every_setting_and_default_is_core_configs(rows):
    defaults = config.load({}, environ={})
    assert [problem for row in rows for problem in setting_problems(row, defaults)] == []
    assert sum(len(row.settings) for row in rows) > 15


def test_a_made_up_test_technique_name_or_setting_is_caught():
    """The checks are live: each kind of wrong cell in a row is named."""
    row = Row("serving", ["`AML.T0020` Poison Training Data", "`AML.T9999` Made Up", "`AML.T0040` Model Access",
                          "AML.T0029 Denial of AI Service"],
              "a control", ["`model_integrity` = `\"verify\"`", "`model_integrity` = `\"off\"`",
                            "`no_such_setting`", "`host` = 127.0.0.1"],
              ["`tests/security/test_threat_map.py::test_a_made_up_test_technique_name_or_setting_is_caught`",
               "`tests/security/test_threat_map.py::test_nothing_like_this`", "`tests/security/nothing.py::test_x`",
               "tests/security/test_threat_map.py"], "all")
    assert named_test_problems(row) == [
        "`tests/security/test_threat_map.py::test_nothing_like_this`: no such test function",
        "tests/security/nothing.py does not exist",
        "not `tests/<file>.py::<test function>`: tests/security/test_threat_map.py"]
    assert technique_problems(row) == [
        "AML.T9999 is not in ATLAS's data (third_party/mitre_atlas)",
        "AML.T0040 is 'AI Model Inference API Access' in ATLAS, not 'Model Access'",
        "not `AML.T####[.###]` Name: AML.T0029 Denial of AI Service"]
    assert setting_problems(row, config.load({}, environ={})) == [
        "SECURITY.md says model_integrity defaults to \"off\"; core/config.py: 'verify'",
        "SECURITY.md names setting 'no_such_setting', which core/config.py does not have",
        "not `setting` or `setting` = `default`: `host` = 127.0.0.1"]
    assert named_test_problems(row._replace(tests=[])) == ["a serving row names no test: a control"]
