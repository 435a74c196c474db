"""tfxops' own layout of a lineage graph (used when Graphviz is not installed), on the
e2e run's model graph: no two boxes overlap, and every edge runs between boxes,
through the placeholders of the layers it crosses, never through a box."""
import pytest

from lineage import layout as layout_lib
from lineage.model import model_lineage


@pytest.fixture(scope="module")
def graph(first_run, e2e_settings):
    return model_lineage(e2e_settings, str(first_run.pushed_version), with_metrics=False)[1]


def test_own_layout_routes_edges_between_boxes_not_through_them(graph):
    names = [f"a{a}" for a in graph.artifacts] + [f"e{e}" for e in graph.executions]
    edges = [((f"a{e.artifact_id}", f"e{e.execution_id}") if e.is_input else (f"e{e.execution_id}", f"a{e.artifact_id}"))
             for e in graph.edges if e.artifact_id in graph.artifacts and e.execution_id in graph.executions]
    placed = layout_lib.layout({n: 3 for n in names}, edges)
    boxes = placed.boxes
    for (src, dst), points in placed.routes.items():
        for x, y in points[1:-1]:
            inside = [n for n, b in boxes.items() if b.x < x < b.x + b.w and b.y < y < b.y + b.h]
            assert not inside, (src, dst, inside)
        for (x1, y1), (x2, y2) in zip(points, points[1:]):      # no box's centre under any step
            crossed = [n for n, b in boxes.items() if n not in (src, dst)
                       and min(x1, x2) <= b.x + b.w / 2 <= max(x1, x2) and min(y1, y2) <= b.y + b.h / 2 <= max(y1, y2)]
            assert not crossed, (src, dst, crossed)
    for a, b in [(a, b) for a in boxes for b in boxes if a < b]:
        p, q = boxes[a], boxes[b]
        assert p.x + p.w <= q.x or q.x + q.w <= p.x or p.y + p.h <= q.y or q.y + q.h <= p.y, (a, b)
