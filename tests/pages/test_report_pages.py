"""The monitoring report and the index as headless Chromium renders them: charts with
axes (tick labels in the rendered DOM), the verdict on top, the 1-row window as too
few rows to judge with no red, everything inside a 1400 px window."""
import re
from pathlib import Path

import pytest

from monitoring.report_charts import RED
from tests.monitoring.conftest import HELD_OUT
from tests.monitoring.test_report import judge_two_windows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judged(tmp_path_factory, e2e_settings, first_run, taxi_rows):
    return judge_two_windows(tmp_path_factory, e2e_settings, first_run, taxi_rows[HELD_OUT])


def _ticks(dom: str):
    return re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', dom)


def test_report_renders_axes_and_the_verdict_on_top(judged, browser, tmp_path):
    _, full, _ = judged
    page = Path(full.report.html)
    dom = browser.dump_dom(page)
    ticks = _ticks(dom)
    assert any(re.fullmatch(r"\d+(\.\d)?%", t) for t in ticks) and "0.0–0.1" in ticks
    assert 'id="verdict"' in dom and f"Decision: {full.decision.action.upper()}" in dom
    box = browser.measure(page, {"verdict": "#verdict", "chart": "svg.chart", "table": "table.features"})
    assert 0 <= box["verdict"][1] < 300, "the verdict is at the top"
    assert box["chart"][2] <= box["viewport"][0] and box["table"][2] <= box["viewport"][0]
    browser.screenshot(page, tmp_path / "report.png")


def test_a_one_row_window_renders_too_few_rows_and_no_red(judged, browser):
    _, _, single = judged
    dom = browser.dump_dom(Path(single.report.html))
    assert "Too few rows to judge" in dom and dom.count(">too few rows to judge<") >= 18
    assert RED not in dom and 'class="bad"' not in dom and 'class="box act' not in dom


def test_index_renders_a_trend_per_feature_linking_each_window(judged, browser, tmp_path):
    settings, full, single = judged
    index = settings.monitor_path / "index.html"
    dom = browser.dump_dom(index)
    assert dom.count('class="chart"') >= 18
    for result in (full, single):
        assert f'href="reports/{Path(result.report.html).name}"' in dom
    box = browser.measure(index, {"chart": "svg.chart", "table": "table"})
    assert box["table"][2] <= box["viewport"][0]
    browser.screenshot(index, tmp_path / "index.png")
