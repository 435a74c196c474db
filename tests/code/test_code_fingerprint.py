"""The model code's fingerprint (part of Transform's and Trainer's properties, so a
code change invalidates the pipeline cache)."""
import sys

from pipeline.pipeline import code_fingerprint


def test_fingerprint_follows_every_file_of_the_code_package(tmp_path, monkeypatch):
    package = tmp_path / "mycode"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("def run_fn(args):\n    return 1\n")
    (package / "helpers.py").write_text("SCALE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_fingerprint(["mycode.train.run_fn"])
    assert first == code_fingerprint(["mycode.train.run_fn"])
    (package / "helpers.py").write_text("SCALE = 3\n")      # a file the function imports
    assert code_fingerprint(["mycode.train.run_fn"]) != first
    sys.modules.pop("mycode", None)


def test_the_project_code_has_a_fingerprint():
    value = code_fingerprint(["modules.transform.preprocessing_fn", "modules.trainer.run_fn"])
    assert len(value) == 64
