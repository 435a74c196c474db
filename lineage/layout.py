"""A layered layout for lineage graphs when Graphviz is not installed: data flows
bottom to top (the asked model, a sink, on top), one layer per step, boxes sized
to their wrapped labels, long edges routed through placeholder points of the
layers they cross (so no edge runs through a box), the order in each layer by the
mean position of neighbours (a few sweeps, as Sugiyama's method does)."""
import dataclasses
from typing import Dict, List, Tuple

BOX_W, LINE_H, PAD, GAP_X, GAP_Y, MARGIN, DUMMY_W = 208, 14, 8, 18, 40, 16, 10


@dataclasses.dataclass
class Placed:
    x: float
    y: float
    w: float
    h: float


@dataclasses.dataclass
class Layout:
    boxes: Dict[str, Placed]                     # node -> box
    routes: Dict[Tuple[str, str], List[Tuple[float, float]]]   # edge -> points, source to target
    width: float
    height: float


def _layers(nodes: List[str], edges: List[Tuple[str, str]]) -> Dict[str, int]:
    """Longest path from a source (producers before consumers)."""
    pred: Dict[str, List[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        pred[dst].append(src)
    layer: Dict[str, int] = {}

    def depth(n: str, seen: frozenset) -> int:
        if n not in layer:
            layer[n] = 1 + max((depth(p, seen | {n}) for p in pred[n] if p not in seen), default=-1)
        return layer[n]
    for n in nodes:
        depth(n, frozenset())
    return layer


def _with_dummies(edges, layer) -> Tuple[Dict[int, List[str]], Dict[Tuple[str, str], List[str]], List[Tuple[str, str]]]:
    """Chains through one placeholder per crossed layer for edges longer than one layer."""
    rows: Dict[int, List[str]] = {}
    chains, short = {}, []
    for src, dst in edges:
        chain = [src]
        for k in range(layer[src] + 1, layer[dst]):
            dummy = f"~{src}>{dst}@{k}"
            layer[dummy] = k
            chain.append(dummy)
        chain.append(dst)
        chains[(src, dst)] = chain
        short += list(zip(chain, chain[1:]))
    for n, k in sorted(layer.items(), key=lambda item: item[0]):
        rows.setdefault(k, []).append(n)
    return rows, chains, short


def _order(rows: Dict[int, List[str]], links: List[Tuple[str, str]], sweeps: int = 8) -> None:
    up: Dict[str, List[str]] = {}
    down: Dict[str, List[str]] = {}
    for a, b in links:
        down.setdefault(a, []).append(b)
        up.setdefault(b, []).append(a)
    position = {n: i for members in rows.values() for i, n in enumerate(members)}
    for sweep in range(sweeps):
        near = up if sweep % 2 == 0 else down
        for k in sorted(rows, reverse=bool(sweep % 2)):
            def centre(n: str) -> float:
                others = [position[m] for m in near.get(n, [])]
                return sum(others) / len(others) if others else position[n]
            rows[k].sort(key=centre)
            for i, n in enumerate(rows[k]):
                position[n] = i


def layout(nodes: Dict[str, int], edges: List[Tuple[str, str]]) -> Layout:
    """``nodes``: name -> lines of its label; ``edges``: (source, target) in data-flow order."""
    edges = [(a, b) for a, b in edges if a in nodes and b in nodes and a != b]
    layer = _layers(list(nodes), edges)
    rows, chains, links = _with_dummies(edges, layer)
    _order(rows, links)
    boxes, top_layer = {}, max(rows) if rows else 0
    heights = {k: max((PAD * 2 + LINE_H * nodes[n] for n in members if n in nodes), default=LINE_H)
               for k, members in rows.items()}
    widths = {k: sum(BOX_W if n in nodes else DUMMY_W for n in members) + GAP_X * (len(members) - 1)
              for k, members in rows.items()}
    width = max(widths.values(), default=BOX_W) + 2 * MARGIN
    y = MARGIN
    for k in range(top_layer, -1, -1):                 # sinks on top: data flows upwards
        x = MARGIN + (width - 2 * MARGIN - widths.get(k, 0)) / 2
        for n in rows.get(k, []):
            w = BOX_W if n in nodes else DUMMY_W
            h = PAD * 2 + LINE_H * nodes[n] if n in nodes else heights[k]
            boxes[n] = Placed(x, y + (heights[k] - h) / 2, w, h)
            x += w + GAP_X
        y += heights.get(k, 0) + GAP_Y
    routes = {edge: _route(chain, boxes) for edge, chain in chains.items()}
    return Layout({n: b for n, b in boxes.items() if n in nodes}, routes, width, y - GAP_Y + MARGIN)


def _route(chain: List[str], boxes: Dict[str, Placed]) -> List[Tuple[float, float]]:
    """Source's top centre, through each placeholder's column, to the target's bottom centre."""
    points = []
    first, last = boxes[chain[0]], boxes[chain[-1]]
    points.append((first.x + first.w / 2, first.y))
    for n in chain[1:-1]:
        b = boxes[n]
        points += [(b.x + b.w / 2, b.y + b.h), (b.x + b.w / 2, b.y)]
    points.append((last.x + last.w / 2, last.y + last.h))
    return points
