"""Small SVG and number-formatting helpers for the HTML reports: strings in, strings out."""

from __future__ import annotations

import math
from html import escape


def attrs(**values: object) -> str:
    """``key="value"`` pairs; ``class_`` becomes ``class``, other underscores become dashes, None is left out."""
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        name = "class" if key == "class_" else key.replace("_", "-")
        if isinstance(value, float):
            value = f"{value:.2f}".rstrip("0").rstrip(".")
        parts.append(f'{name}="{escape(str(value))}"')
    return " ".join(parts)


def rect(x: float, y: float, width: float, height: float, *, tip: str | None = None, **style: object) -> str:
    """A rectangle; ``tip`` becomes its hover text (an SVG <title>)."""
    body = attrs(x=float(x), y=float(y), width=float(max(width, 0.0)), height=float(height), **style)
    if tip:
        return f"<rect {body}><title>{escape(tip)}</title></rect>"
    return f"<rect {body}/>"


def text(x: float, y: float, content: str, **style: object) -> str:
    return f"<text {attrs(x=float(x), y=float(y), **style)}>{escape(content)}</text>"


def line(x1: float, y1: float, x2: float, y2: float, **style: object) -> str:
    return f"<line {attrs(x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2), **style)}/>"


def svg(width: float, height: float, body: list[str], label: str) -> str:
    """An SVG that scales to its container's width, with a label for screen readers."""
    head = attrs(viewBox=f"0 0 {width:g} {height:g}", role="img", aria_label=label, xmlns="http://www.w3.org/2000/svg")
    return f"<svg {head}>" + "".join(body) + "</svg>"


def hatch_pattern(pattern_id: str, colour: str, background: str) -> str:
    """Diagonal stripes (for checkpointed blocks and idle time), defined once per SVG."""
    return (
        f'<pattern id="{pattern_id}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{background}"/>'
        f'<rect width="2.2" height="6" fill="{colour}"/></pattern>'
    )


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round axis values from 0 past ``top`` (steps of 1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


# ----- numbers as people read them ------------------------------------------------------------------------
def seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 100:
        return f"{value:.2f} s"
    return f"{value:,.0f} s"


def seconds_tick(value: float) -> str:
    """An axis value (already round): no trailing zeros."""
    if value == 0:
        return "0"
    if value < 1:
        return f"{value * 1e3:g} ms"
    return f"{value:g} s"


def gigabytes(value: float) -> str:
    return f"{value:,.1f} GB"


def count(value: float) -> str:
    return f"{value:,.0f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"
