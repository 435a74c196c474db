"""bench/serving.py end to end at tiny durations (slow: it builds the peers' virtualenv
once per machine and starts eight servers): every row, the peers' included, is
measured, the goals table is written between the markers of the page it is given,
replacing the section an earlier run left there, and the page's other sections stay;
a model directory that is no model is named."""
import subprocess
import sys

import pytest

from bench.serving import BEGIN, END
from tests.conftest import REPO

BENCH = REPO / "bench" / "serving.py"
PEER_ROWS = ("peer: FastAPI + uvicorn (TF Serving REST shape) | REST",
             "peer: KServe model server, V1 protocol | REST",
             "peer: KServe model server, V2 protocol | REST",
             "peer: KServe model server, V2 protocol | gRPC")
GOALS = ("throughput, 32 clients, REST: tfxops serve / FastAPI + uvicorn",
         "throughput, 32 clients, gRPC: tfxops serve / KServe V2",
         "server CPU per request", "batching at 32 clients", "32-row requests",
         "lone client p50 (gRPC) minus")


def run_bench(*args, timeout=1500):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_bench_measures_every_peer_and_writes_its_section(pushed_model, tmp_path):
    page = tmp_path / "bench-serving.md"
    text = (REPO / "docs" / "bench-serving.md").read_text()
    if BEGIN not in text:   # an earlier run's section, which this run replaces
        title, _, rest = text.partition("\n")
        text = f"{title}\n{BEGIN}\n## an earlier run\n{END}\n{rest}"
    page.write_text(text)
    kept = [line for line in text.split(END, 1)[1].splitlines() if line.startswith("## ")]
    result = run_bench("--model-dir", str(pushed_model), "--seconds", "0.2", "--rounds", "1",
                       "--out", str(page))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = page.read_text()
    assert "## an earlier run" not in text and text.count(BEGIN) == text.count(END) == 1
    assert all(line in text for line in kept), "a hand-written section was lost"
    for row in PEER_ROWS:
        for clients in (1, 32):
            line = next(l for l in text.splitlines() if l.startswith(f"| {row} | {clients} |"))
            assert float(line.split("|")[6]) > 0, line      # requests/s
    for goal in GOALS:
        assert any(l.startswith(f"| {goal}") and (" met |" in l or "not met" in l)
                   for l in text.splitlines()), goal


@pytest.mark.slow
def test_bench_names_a_model_dir_that_is_no_model(tmp_path):
    result = run_bench("--model-dir", str(tmp_path), "--no-peers", timeout=300)
    assert result.returncode != 0
    assert f"--model-dir {tmp_path} holds no saved_model.pb" in result.stderr
    assert "Traceback" not in result.stderr
