"""Charts for the admin dashboard, drawn as inline SVG on the server.

These functions only compute geometry (points, rectangles, tick labels); the template writes
the SVG elements, so every label goes through Jinja's escaping like any other text and the
page needs no script or library from anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PALETTE = ("#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#e67700", "#0b7285", "#c2255c")
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    color: str
    points: str  # "x,y x,y ..." for <polyline points>
    last: float


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass
class Chart:
    title: str
    width: int = WIDTH
    height: int = HEIGHT
    lines: list[Line] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    empty: bool = False


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 < value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale  # pragma: no cover (the loop always returns)


def _axis_top(value: float) -> float:
    """The top of a count axis with four round steps (0, 10, 20, 30, 40 for 25)."""
    return 4 * max(1.0, _nice_max(value / 4))


def _frame(chart: Chart, top: float, labels: Sequence[str], percent: bool) -> None:
    plot_h = chart.height - TOP - BOTTOM
    for i in range(5):
        value = top * i / 4
        text = f"{value:.1%}" if percent else f"{value:,.0f}"
        chart.y_ticks.append((TOP + plot_h - plot_h * i / 4, text))
    if labels:
        every = max(1, len(labels) // 6)
        step = (chart.width - LEFT - RIGHT) / max(1, len(labels))
        for i in range(0, len(labels), every):
            chart.x_labels.append((LEFT + step * (i + 0.5), labels[i]))


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series]) -> Chart:
    """One line per series over the same x labels (days)."""
    chart = Chart(title)
    values = [v for s in series for v in s.values]
    if not values or not labels:
        chart.empty = True
        return chart
    top = _axis_top(max(values))
    _frame(chart, top, labels, percent=False)
    plot_w, plot_h = chart.width - LEFT - RIGHT, chart.height - TOP - BOTTOM
    step = plot_w / max(1, len(labels))
    for index, one in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(
            f"{LEFT + step * (i + 0.5):.1f},{TOP + plot_h - plot_h * v / top:.1f}"
            for i, v in enumerate(one.values)
        )
        chart.lines.append(Line(one.name, color, points, one.values[-1] if one.values else 0))
        chart.legend.append((color, one.name))
    return chart


def bar_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, percent: bool = False
) -> Chart:
    """Bars side by side per label, one colour per series."""
    chart = Chart(title)
    values = [v for s in series for v in s.values]
    if not values or not labels:
        chart.empty = True
        return chart
    top = _axis_top(max(values)) if not percent else max(0.01, _nice_max(max(values)))
    _frame(chart, top, labels, percent=percent)
    plot_w, plot_h = chart.width - LEFT - RIGHT, chart.height - TOP - BOTTOM
    group = plot_w / len(labels)
    width = group * 0.8 / max(1, len(series))
    for index, one in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        chart.legend.append((color, one.name))
        for i, value in enumerate(one.values):
            height = plot_h * value / top
            text = f"{value:.2%}" if percent else f"{value:,.0f}"
            chart.rects.append(
                Rect(
                    x=LEFT + group * i + group * 0.1 + width * index,
                    y=TOP + plot_h - height,
                    width=width,
                    height=height,
                    color=color,
                    title=f"{labels[i]} · {one.name}: {text}",
                )
            )
    return chart
