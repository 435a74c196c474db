"""Inline SVG charts for the monitoring pages: bars with axes, ticks and percentages,
horizontal bars for categories, trend lines over windows, a distance meter. No
scripts, no external files; every axis label is an SVG ``text`` of class ``tick``."""
import html
import math
from typing import Dict, List, Optional, Sequence, Tuple

from monitoring.report_bins import human, nice_step

TRAIN_COLOR, SERVE_COLOR, DRIFT_COLOR = "#4C78A8", "#F58518", "#8E6C8A"
MUTED, RED, AXIS = "#b0bec5", "#e53935", "#666"
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _e(x) -> str:
    return html.escape(str(x))


def percent(x: Optional[float]) -> str:
    if x is None:
        return "–"
    if x and abs(x) < 0.001:
        return "<0.1%"
    return f"{x * 100:.1f}%" if abs(x) < 0.1 else f"{x * 100:.0f}%"


def _ticks(peak: float, count: int = 4) -> List[float]:
    step = nice_step(max(peak, 1e-6), count)
    top = math.ceil(max(peak, 1e-6) / step - 1e-9) * step
    return [i * step for i in range(int(round(top / step)) + 1)]


def _tick_label(value: float, step: float) -> str:
    return f"{value * 100:.{0 if step * 100 >= 1 else 1}f}%"


def _side_values(dist: Dict) -> List[Tuple[str, List[float], str]]:
    return [(name, dist[key], color) for name, key, color in
            (("training", "training", TRAIN_COLOR), ("serving", "serving", SERVE_COLOR)) if dist.get(key)]


# ------------------------------------------------------------------ vertical bars
def bars(dist: Dict, axis_title: str = "", width: int = 410, height: int = 170) -> str:
    """Training and serving share per bin, side by side, with a percent y axis and
    the bins' labels on the x axis."""
    bins, sides = dist["bins"], _side_values(dist)
    left, top, rotate = 44, 8, max(len(b) for b in bins) * 5.5 > (width - 54) / max(1, len(bins))
    bottom = 20 + (max(len(b) for b in bins) * 4.2 if rotate else 0) + (14 if axis_title else 0)
    plot_w, n = width - left - 10, max(1, len(bins))
    ticks = _ticks(max([v for _, values, _ in sides for v in values] + [0.0]))
    scale = height / ticks[-1]
    out = [f'<svg class="chart" viewBox="0 0 {width} {height + top + bottom:.0f}" width="{width}" '
           f'height="{height + top + bottom:.0f}" role="img" {FONT}>']
    out += _y_axis(ticks, left, top, plot_w, height, scale)
    slot = plot_w / n
    bar = max(1.0, (slot - 4) / max(1, len(sides)))
    for i, label in enumerate(bins):
        x = left + i * slot + 2
        for j, (name, values, color) in enumerate(sides):
            h = values[i] * scale
            out.append(f'<rect x="{x + j * bar:.1f}" y="{top + height - h:.1f}" width="{bar:.1f}" '
                       f'height="{h:.1f}" fill="{color}"><title>{_e(label)}: {name} {percent(values[i])}'
                       f'</title></rect>')
        out.append(_x_label(label, left + (i + 0.5) * slot, top + height + 12, rotate))
    if axis_title:
        out.append(f'<text class="axis-title" x="{left + plot_w / 2:.0f}" y="{height + top + bottom - 3:.0f}" '
                   f'text-anchor="middle" font-size="10" fill="{AXIS}">{_e(axis_title)}</text>')
    out.append("</svg>")
    return "".join(out)


def _y_axis(ticks: List[float], left: float, top: float, plot_w: float, height: float, scale: float) -> List[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else ticks[0]
    out = []
    for t in ticks:
        y = top + height - t * scale
        out.append(f'<line x1="{left}" x2="{left + plot_w:.0f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text class="tick" x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="10" '
                   f'fill="{AXIS}">{_tick_label(t, step)}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + height}" stroke="{AXIS}"/>'
               f'<line class="axis" x1="{left}" x2="{left + plot_w:.0f}" y1="{top + height}" y2="{top + height}" '
               f'stroke="{AXIS}"/>')
    return out


def _x_label(label: str, x: float, y: float, rotate: bool) -> str:
    turn = f' transform="rotate(-35 {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text class="tick" x="{x:.1f}" y="{y:.1f}" text-anchor="{"end" if rotate else "middle"}" '
            f'font-size="10" fill="{AXIS}"{turn}>{_e(label)}</text>')


# ------------------------------------------------------------------ horizontal bars
def hbars(dist: Dict, width: int = 410) -> str:
    """Categories top to bottom with their full names, two bars each, percent x axis."""
    bins, sides = dist["bins"], _side_values(dist)
    label_w = min(200, 12 + 6.2 * max(len(b) for b in bins))
    row, top, plot_w = 8 * max(1, len(sides)) + 8, 6, width - label_w - 16
    height = row * len(bins)
    ticks = _ticks(max([v for _, values, _ in sides for v in values] + [0.0]))
    scale = plot_w / ticks[-1]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else ticks[0]
    out = [f'<svg class="chart" viewBox="0 0 {width} {height + top + 22}" width="{width}" '
           f'height="{height + top + 22}" role="img" {FONT}>']
    for t in ticks:
        x = label_w + t * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + height}" stroke="#eee"/>'
                   f'<text class="tick" x="{x:.1f}" y="{top + height + 14}" text-anchor="middle" font-size="10" '
                   f'fill="{AXIS}">{_tick_label(t, step)}</text>')
    for i, label in enumerate(bins):
        y = top + i * row + 4
        out.append(_wrapped_label(label, label_w - 6, y + row / 2 - 2))
        for j, (name, values, color) in enumerate(sides):
            out.append(f'<rect x="{label_w}" y="{y + j * 8:.1f}" width="{values[i] * scale:.1f}" height="7" '
                       f'fill="{color}"><title>{_e(label)}: {name} {percent(values[i])}</title></rect>')
    out.append(f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{top}" y2="{top + height}" stroke="{AXIS}"/>'
               f'<line class="axis" x1="{label_w}" x2="{width - 16}" y1="{top + height}" y2="{top + height}" '
               f'stroke="{AXIS}"/></svg>')
    return "".join(out)


def _wrapped_label(label: str, right: float, y: float) -> str:
    """A category name right-aligned before its bars; a long one on two lines."""
    limit = max(8, int(right / 6.2))
    if len(label) <= limit:
        lines = [label]
    else:
        cut = label.rfind(" ", 0, limit)
        cut = cut if cut > 0 else limit
        lines = [label[:cut], label[cut:].strip()]
    first = y + 3 - 5.5 * (len(lines) - 1)
    spans = "".join(f'<tspan x="{right:.0f}" y="{first + 11 * i:.1f}">{_e(line)}</tspan>'
                    for i, line in enumerate(lines))
    return f'<text class="tick" text-anchor="end" font-size="10" fill="#333">{spans}</text>'


# ------------------------------------------------------------------ trend over windows
def trend(points: Sequence[Dict], threshold: Optional[float], width: int = 410, height: int = 130,
          y_title: str = "distance", second: Optional[Sequence[Optional[float]]] = None) -> str:
    """A line over windows: ``points`` as {"label", "value", "href", "muted", "over"};
    muted points (too few rows) hollow and grey, points over ``threshold`` red; each
    point links to its window's report. ``second``: another series (dashed), one value
    per point."""
    values = [p["value"] for p in points if p["value"] is not None] + [v for v in second or [] if v is not None]
    peak = max(values + [threshold or 0.0, 1e-3])
    step = nice_step(peak, 4)
    ticks = [i * step for i in range(int(math.ceil(peak / step - 1e-9)) + 1)]
    left, top, bottom = 46, 8, 40
    plot_w, scale = width - left - 12, height / ticks[-1]
    slot = plot_w / max(1, len(points))
    out = [f'<svg class="chart" viewBox="0 0 {width} {height + top + bottom}" width="{width}" '
           f'height="{height + top + bottom}" role="img" {FONT}>']
    for t in ticks:
        y = top + height - t * scale
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text class="tick" x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="10" '
                   f'fill="{AXIS}">{human(t, step)}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + height}" stroke="{AXIS}"/>'
               f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + height}" y2="{top + height}" '
               f'stroke="{AXIS}"/><text class="axis-title" x="10" y="{top + height / 2:.0f}" font-size="10" '
               f'fill="{AXIS}" transform="rotate(-90 10 {top + height / 2:.0f})" text-anchor="middle">'
               f'{_e(y_title)}</text>')
    if threshold is not None:
        y = top + height - threshold * scale
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{RED}" '
                   f'stroke-dasharray="4 3"><title>threshold {threshold:g}</title></line>')
    if second:
        dashes = [f"{left + (i + 0.5) * slot:.1f},{top + height - v * scale:.1f}" for i, v in enumerate(second)
                  if v is not None]
        if len(dashes) > 1:
            out.append(f'<polyline points="{" ".join(dashes)}" fill="none" stroke="{DRIFT_COLOR}" '
                       f'stroke-dasharray="5 3" stroke-width="1.5"/>')
    out += _trend_line(points, left, top, height, slot, scale)
    out.append("</svg>")
    return "".join(out)


def _trend_line(points: Sequence[Dict], left: float, top: float, height: float, slot: float,
                scale: float) -> List[str]:
    out, path = [], []
    for i, p in enumerate(points):
        x = left + (i + 0.5) * slot
        out.append(_x_label(p["label"], x, top + height + 12, rotate=len(points) > 4))
        if p["value"] is None:
            continue
        y = top + height - p["value"] * scale
        path.append(f"{'M' if not path else 'L'}{x:.1f},{y:.1f}")
        color = MUTED if p.get("muted") else (RED if p.get("over") else "#37474f")
        fill = "#fff" if p.get("muted") else color
        note = " (too few rows to judge)" if p.get("muted") else ""
        out.append(f'<a href="{_e(p["href"])}"><circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" '
                   f'stroke="{color}" stroke-width="1.5"><title>{_e(p["label"])}: {human(p["value"])}{note}'
                   f'</title></circle></a>')
    if len(path) > 1:
        out.insert(0, f'<path d="{" ".join(path)}" fill="none" stroke="#90a4ae" stroke-width="1.5"/>')
    return out


# ------------------------------------------------------------------ meter
def meter(distance: Optional[float], threshold: Optional[float], muted: bool = False) -> str:
    """The distance as a bar with its threshold as a tick (red only when over it and judged)."""
    if distance is None:
        return '<span class="muted">–</span>'
    scale = max(distance, threshold or 0, 0.2) * 1.1
    w = 110
    over = threshold is not None and distance > threshold and not muted
    color = RED if over else MUTED if muted else "#90a4ae"
    svg = [f'<svg width="{w}" height="12"><rect width="{w}" height="12" fill="#f0f0f0"/>',
           f'<rect width="{w * distance / scale:.1f}" height="12" fill="{color}"/>']
    if threshold is not None:
        tx = w * threshold / scale
        svg.append(f'<line x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="12" stroke="#000" stroke-width="2"/>')
    svg.append("</svg>")
    return "".join(svg)
