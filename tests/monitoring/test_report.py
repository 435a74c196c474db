"""The monitoring report and the index, on windows the real monitor judged (request
logs written by the real writer, the e2e home's model and MLMD store): the verdict,
charts with axes on readable bins, each side's figures, why each feature is or is
not flagged, the test chosen by sample size, a leftover 1-row window shown as too
few rows to judge (never red), the index and `tfxops monitor report`.
Headless Chromium renders the same pages in tests/pages/ (slow)."""
import contextlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from core import features as F
from monitoring import checks, monitor, report_bins, report_statistics
from monitoring.report_charts import RED
from tests.monitoring.conftest import log_records, monitor_settings, write_logs
from tfxops import cli

WINDOW_ROWS = 600


def _chunks(rows, per_request):
    return [rows[i:i + per_request] for i in range(0, len(rows), per_request)]


def judge_two_windows(tmp_path_factory, e2e_settings, first_run, held_out_rows):
    """Two windows judged by the monitor: 600 held-out rows, then a leftover single row."""
    settings = monitor_settings(tmp_path_factory.mktemp("report"), e2e_settings, first_run, attribution_rows=0)
    version = int(first_run.pushed_version)
    write_logs(settings.request_logs_path, log_records(_chunks(held_out_rows[:WINDOW_ROWS], 50), version), 100)
    full = monitor.monitor_once(settings)
    write_logs(settings.request_logs_path, log_records([held_out_rows[WINDOW_ROWS:WINDOW_ROWS + 1]], version,
                                                       prefix="one"), 100)
    single = monitor.monitor_once(settings)
    assert (full.rows, single.rows) == (WINDOW_ROWS, 1)
    return settings, full, single


@pytest.fixture(scope="module")
def judged(tmp_path_factory, e2e_settings, first_run, held_out_rows):
    return judge_two_windows(tmp_path_factory, e2e_settings, first_run, held_out_rows)


class _Elements(HTMLParser):
    """Every element's tag, attributes and text (the DOM a browser builds from it)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements, self._open = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        self._open.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self._open:        # an element's text includes its children's
            element["text"] += data

    def with_class(self, name):
        return [e for e in self.elements if name in (e["attrs"].get("class") or "").split()]


def test_report_has_a_verdict_charts_with_axes_and_figures_side_by_side(judged):
    settings, full, _ = judged
    page = Path(full.report.html).read_text()
    dom = _Elements(page)
    assert any(e["attrs"].get("id") == "verdict" for e in dom.elements)
    assert f"Decision: {full.decision.action.upper()}</b> — " in page
    assert re.search(r"\d+ of \d+ measured features \(\d+%\) skewed vs training", page)
    ticks = [e["text"] for e in dom.with_class("tick")]
    assert any(re.fullmatch(r"\d+(\.\d)?%", t) for t in ticks), "percent ticks on the y axes"
    assert len(dom.with_class("axis")) >= 2 * 17, "two axes per chart"
    # readable bins: round numbers, dates for the timestamp, 0-1 for the model's output
    assert "e+" not in " ".join(ticks) and "…" not in page
    assert any(re.fullmatch(r"[A-Z][a-z]{2} 20\d\d", t) for t in ticks), "timestamps as dates"
    assert "0.0–0.1" in ticks and "0.9–1.0" in ticks, "probability outputs on 0-1 bins"
    assert "Cash" in ticks and "Credit Card" in ticks, "categories by name"
    # each side's figures, and the statistic the sample size picks (600 rows: tests)
    for label in ("rows with a value", "missing", "mean ± std", "min / median / max", "unique values", "top values"):
        assert label in page
    assert "K-S test: p = " in page and "chi-squared test: p = " in page and "n = " in page
    document = json.loads(Path(full.report.json).read_text())
    assert document["policy"]["monitor_min_rows"] == settings.monitor_min_rows


def test_each_row_says_why_it_is_or_is_not_flagged(judged):
    _, full, _ = judged
    page = Path(full.report.html).read_text()
    why = {m.group(1): m.group(2) for m in re.finditer(
        r"<td class='[a-z]+'>([a-z_]+)</td>.*?<td class='why'>(.*?)</td>", page)}
    assert set(why) >= set(F.SERVING_FEATURES)
    assert "within its threshold" in why["fare"] or "flagged" in why["fare"]
    assert "not watched: the schema sets no skew threshold" in why["trip_start_hour"]
    assert "a time column" in why[F.TIME_KEY]
    assert "no values in the training split nor in this window" in why["pickup_census_tract"]


def test_a_one_row_window_is_too_few_rows_to_judge_and_never_red(judged):
    settings, _, single = judged
    assert single.decision.action == "none"
    assert f"monitor_min_rows={settings.monitor_min_rows}" in single.decision.because
    page = Path(single.report.html).read_text()
    dom = _Elements(page)
    assert "Too few rows to judge" in page
    states = [e["text"] for e in dom.with_class("pill")]
    assert states.count("too few rows to judge") >= len(F.SERVING_FEATURES) + 1    # + the prediction drift
    assert not [e for e in dom.elements if e["tag"] == "td" and "bad" in (e["attrs"].get("class") or "")]
    assert RED not in page and "class='box act'" not in page and "<b class=bad>" not in page


def test_a_one_row_window_flags_nothing_in_its_summary_line_nor_in_mlmd(judged):
    """Its raw checks fire on one row (what a flag would be), yet neither the line
    `tfxops monitor` prints nor the lineage record says a feature is flagged."""
    from core import mlmd
    from monitoring import record

    settings, full, single = judged
    (group,) = single.versions
    assert any(f.flagged for f in group.features)             # one row is far from training...
    assert group.flagged_features == [] and not single.decision.triggered      # ...and is not judged
    too_few = f"too few rows to judge (1 < monitor_min_rows={settings.monitor_min_rows})"
    line = single.summary_line()
    assert too_few in line and "flagged" not in line, line
    assert single.to_dict()["versions"][0]["decision"]["not_judged"] == too_few
    assert "too few rows" not in full.summary_line() and "flagged: " in full.summary_line()
    store = mlmd.open_store(settings)
    execution = record.find_run(store, single.window, str(group.version))
    assert json.loads(mlmd.custom(execution, "flagged_features")) == []
    assert mlmd.custom(execution, "triggered") == 0 and mlmd.custom(execution, "because") == too_few


def test_writers_at_once_each_use_a_temporary_file_of_their_own(judged):
    """The monitor and `tfxops monitor report` rewriting the same pages at once: with
    one fixed temporary name, one writer's os.replace took the other's file away."""
    from concurrent.futures import ThreadPoolExecutor

    from monitoring import report

    settings, _, _ = judged
    with ThreadPoolExecutor(6) as pool:
        indexes = list(pool.map(lambda _: report.regenerate(settings), range(12)))
    assert {str(i) for i in indexes} == {str(settings.monitor_path / "index.html")}
    assert "too few rows to judge" in indexes[0].read_text()
    leftovers = [p.name for p in settings.monitor_path.rglob(".*.tmp")]
    assert not leftovers, leftovers


def test_index_links_every_window_and_the_command_regenerates_all(judged, tmp_path):
    settings, full, single = judged
    index = settings.monitor_path / "index.html"
    page = index.read_text()
    for result in (full, single):
        assert f"reports/{Path(result.report.html).name}" in page
    assert "prediction drift" in page and "Features: skew vs training over time" in page
    assert page.count("<svg") >= 2 + 16 and "too few rows to judge" in page

    Path(full.report.html).unlink()
    index.unlink()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["monitor", "report", "--home", str(settings.home)])
    assert code == 0, err.getvalue()
    assert out.getvalue().strip() == str(index) and index.is_file() and Path(full.report.html).is_file()
    assert f"Decision: {full.decision.action.upper()}" in Path(full.report.html).read_text()

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["monitor", "report", "--home", str(tmp_path)])
    assert code == 2 and f"no monitoring reports in {tmp_path / 'monitoring' / 'reports'}" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def _stats(columns):
    return checks.statistics_of({k: np.asarray(v, dtype=np.float64) for k, v in columns.items()})


def test_tests_by_sample_size_find_a_shift_and_no_shift_where_there_is_none(taxi_rows):
    """The K-S test read from the histograms is conservative: no false alarm on a sample
    of the same data, the 30% fare shift found as the rows' own test finds it."""
    from scipy import stats as scipy_stats

    fares = np.array([float(r["fare"]) for r in taxi_rows if r["fare"]])
    rng = np.random.default_rng(7)
    training = fares[:5000]
    base = checks.feature_stats(_stats({"fare": training}), "fare")
    for seed_rows, scale, expect in ((rng.choice(fares[5000:], 400), 1.0, False),
                                     (rng.choice(fares[5000:], 400), 1.0, False),
                                     (rng.choice(fares[5000:], 400), 1.3, True)):
        window = seed_rows * scale
        current = checks.feature_stats(_stats({"fare": window}), "fare")
        test = report_statistics.choose({"skew": 0.0, "skew_measure": "JENSEN_SHANNON_DIVERGENCE"}, base, current)
        exact = scipy_stats.ks_2samp(training, window)
        assert test.method == "K-S test" and test.rows == [5000, 400]
        assert test.significant is expect and bool(exact.pvalue < 0.05) is expect, (test, exact)
        assert test.value <= exact.statistic + 1e-9, "never more than the rows' own distance"
    large = checks.feature_stats(_stats({"fare": fares[5000:7000]}), "fare")
    test = report_statistics.choose({"skew": 0.01, "skew_measure": "JENSEN_SHANNON_DIVERGENCE"}, base, large)
    assert test.p_value is None and test.value == 0.01, "over 1,000 rows on both sides: the monitor's distance"


def test_bins_are_round_numbers_over_both_sides(taxi_rows):
    miles = np.array([float(r["trip_miles"]) for r in taxi_rows if r["trip_miles"]])
    training = checks.feature_stats(_stats({"trip_miles": miles[:4000]}), "trip_miles")
    serving = checks.feature_stats(_stats({"trip_miles": miles[4000:6000] * 2}), "trip_miles")
    dist = report_bins.distribution(training, serving)
    edges = np.array(dist["edges"])
    step = edges[1] - edges[0]
    assert np.allclose(np.diff(edges), step) and np.allclose(edges / step, np.round(edges / step))
    assert report_bins.nice_step(step * 10) in (step, step * 2) and dist["bins"][-1].startswith("≥ ")
    assert sum(dist["training"]) == pytest.approx(1.0, abs=1e-6)
    assert sum(dist["serving"]) == pytest.approx(1.0, abs=1e-6)
    assert sum(dist["serving"][:3]) < sum(dist["training"][:3]), "the doubled trips sit further right"
    assert all(re.fullmatch(r"\d+(\.\d+)?–\d+(\.\d+)?", label) for label in dist["bins"][:-1]), dist["bins"]


def test_values_clients_sent_are_shown_as_text_never_as_markup():
    """A category a client sent (a company name) reaches the page escaped: no script
    runs when a person opens the report or the index."""
    from monitoring import report

    attack = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    feature = {"name": "company", "type": "BYTES", "skew": 0.5, "skew_threshold": 0.1, "skew_measure": "L_INFTY",
               "drift": None, "drift_threshold": None, "anomalies": [{"severity": "ERROR", "short": attack,
                                                                       "description": attack}],
               "over_skew": True, "over_drift": False, "flagged": True, "serving_present": True}
    document = {"window": "w-1", "rows": 900, "decision": {"action": "none", "because": attack, "reasons": [attack]},
                "policy": {"monitor_min_rows": 500}, "versions": [{
                    "model_name": "taxi", "version": 1, "rows": 900, "features": [feature],
                    "distributions": {"company": {"kind": "categorical", "bins": [attack, "other"],
                                                  "training": [0.5, 0.5], "serving": [0.9, 0.1]}}}]}
    page = report.render_html(document)
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    index = report.report_index.render([(Path("w-1.json"), document)], {}, report.CSS)
    assert "<script" not in index
