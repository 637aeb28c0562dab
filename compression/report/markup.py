"""HTML building blocks: every piece of text goes through `esc` (model and node names are user input)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from compression.report.values import as_float


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def tag(name: str, body: str = "", **attrs: Any) -> str:
    """`<name attrs>body</name>`; body is trusted markup, attribute values are escaped; `cls` is `class`."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = "class" if key == "cls" else key.replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{esc(value)}"')
    return f"<{' '.join(parts)}>{body}</{name}>"


def section(anchor: str, title: str, body: str) -> str:
    return tag("section", tag("h2", esc(title)) + body, id=anchor)


def para(text: str, cls: str | None = None) -> str:
    """A paragraph of plain text (escaped)."""
    return tag("p", esc(text), cls=cls)


def note(text: str) -> str:
    return para(text, cls="note")


def badge(text: str, kind: str = "neutral") -> str:
    """kind: good | bad | warn | neutral."""
    return tag("span", esc(text), cls=f"badge {kind}")


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str | None = None, numeric: set[int] = frozenset()
) -> str:
    """Cells are trusted markup (escape them with `esc` or build them with these helpers)."""
    head = "".join(tag("th", esc(h), cls="num" if i in numeric else None) for i, h in enumerate(headers))
    body = "".join(
        tag("tr", "".join(tag("td", cell, cls="num" if i in numeric else None) for i, cell in enumerate(row)))
        for row in rows
    )
    return tag("table", tag("thead", tag("tr", head)) + tag("tbody", body), cls=cls)


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of label -> trusted markup, skipping empty values."""
    rows = "".join(tag("tr", tag("th", esc(k)) + tag("td", v)) for k, v in pairs if v)
    return tag("table", tag("tbody", rows), cls="kv") if rows else ""


def meter(fraction: float | None, kind: str = "out") -> str:
    """A small inline bar (CSS) for a 0..1 fraction, used inside table cells."""
    value = as_float(fraction)
    if value is None:
        return ""
    width = max(0.0, min(1.0, value)) * 100
    return tag("span", tag("span", "", cls=f"fill {kind}", style=f"width:{width:.1f}%"), cls="meter")


def collapsible(summary: str, body: str, open_: bool = False) -> str:
    return tag("details", tag("summary", esc(summary)) + body, open=open_)


def pre(text: str) -> str:
    return tag("pre", esc(text))


# --- numbers ---------------------------------------------------------------------------------------


def fmt_bytes(value: Any) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.3g} {unit}" if number / scale < 100 else f"{number / scale:.0f} {unit}"
    return f"{number:.0f} B"


def fmt_count(value: Any) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.3g} {unit}" if number / scale < 100 else f"{number / scale:.0f} {unit}"
    return f"{number:.0f}"


def fmt_ms(value: Any) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    if number >= 100:
        return f"{number:.0f} ms"
    return f"{number:.3g} ms"


def fmt_s(value: Any) -> str:
    number = as_float(value)
    if number is None:
        return "–"
    return f"{number:.2f} s" if number < 60 else f"{number / 60:.1f} min"


def fmt_pct(value: Any, digits: int = 1) -> str:
    number = as_float(value)
    return "–" if number is None else f"{number * 100:.{digits}f}%"


def fmt_points(value: Any) -> str:
    """A drop in accuracy as signed percentage points (a negative drop is a gain)."""
    number = as_float(value)
    return "–" if number is None else f"{-number * 100 + 0.0:+.2f} pt"


def fmt_ratio(value: Any) -> str:
    number = as_float(value)
    return "–" if number is None else f"{number:.3g}×"


def fmt_num(value: Any, digits: int = 4) -> str:
    number = as_float(value)
    if number is None:
        return "–" if value is None else esc(value)
    if number == int(number) and abs(number) < 1e15:
        return f"{int(number)}"
    return f"{number:.{digits}g}"
