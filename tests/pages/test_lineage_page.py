"""The lineage graph page as headless Chromium lays it out, with Graphviz ``dot`` and
with tfxops' own layout: it fits a 1400 px window, the asked model's box is in view,
no label is cut, every box's properties are on the page (not only on hover)."""
import re

import pytest

from lineage import render
from lineage.model import model_lineage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_report(first_run, e2e_settings):
    return model_lineage(e2e_settings, str(first_run.pushed_version), with_metrics=True)


@pytest.mark.parametrize("layout", ["dot", "own"])
def test_lineage_graph_fits_the_window_with_the_model_in_view(layout, model_report, browser, tmp_path, request):
    if layout == "dot":
        request.getfixturevalue("graphviz_dot")
    report, graph = model_report
    page = tmp_path / f"lineage-{layout}.html"
    page.write_text(render.model_html(report, graph, use_dot=layout == "dot"))
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    (focus,) = graph.focus
    box = browser.measure(page, {"svg": "svg.lineage", "model": f"#box-a{focus}"})
    width, height = box["viewport"]
    assert width == 1400 and box["svg"][2] - box["svg"][0] <= width, box
    left, top, right, bottom = box["model"]
    assert 0 <= left and right <= width and 0 <= top and bottom <= height, box

    dom = browser.dump_dom(page)
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", dom)
    assert labels and not [t for t in labels if t.endswith("…") or t.endswith("...")], labels
    text = " ".join(labels)
    assert f"PushedModel #{focus}" in text and f"version {report['version']}" in text
    for name in ("Trainer", "Evaluator", "Pusher", "CsvExampleGen"):
        assert any(t.startswith(name + " #") for t in labels), name
    assert re.search(r"\bauc 0\.\d+", text), "the Evaluator's metric on its box"
    for aid in graph.artifacts:
        assert f'id="node-a{aid}"' in dom and f'href="#node-a{aid}"' in dom, "every box links to its properties"
    browser.screenshot(page, tmp_path / f"lineage-{layout}.png")
