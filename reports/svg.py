"""Charts as inline SVG, drawn in Python: no JavaScript library, no network, nothing to load.

Three kinds, each returning one `<figure class="chart">` (markupsafe.Markup) holding an `<svg>`
whose marks carry `<title>` tooltips and `data-series` names (the page's small script uses them to
highlight a series when its legend entry is hovered):

    xy_chart(series, ...)       points and lines on numeric axes (linear or log y)
    bar_chart(groups, bars, ...) grouped bars, optional reference marks per bar
    heatmap(rows, cols, values, ...) a colour grid with a colour scale

Coordinates are in a fixed viewBox; the SVG scales to the page width. Every series stays visible:
lines drawn on exactly the same coordinates are detected and drawn as one line of alternating
dashes in their colours, each marked `data-coincides` and named so in the legend; a marker drawn
on another series' marker is drawn smaller, inside it. Legend entries show each series' own line, dash
and marker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

FONT = 12
Fmt = Callable[[float], str]

# Paul Tol's "vibrant" palette: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0077BB", "#EE7733", "#009988", "#CC3311", "#33BBEE", "#EE3377", "#BBBBBB", "#000000"]

# viridis at 9 stops (perceptually uniform, readable in grey)
_VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]


@dataclass
class Series:
    """One named set of points. `tips` (one per point) become the points' tooltips; `marked` (one
    bool per point) says which points get a marker (default: all). Series of the same name share
    one legend entry."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str = PALETTE[0]
    line: bool = True
    dash: str = ""  # an SVG stroke-dasharray, e.g. "6 3"; "" = solid
    marker: str = "circle"  # circle | square | diamond | triangle | star | none
    size: float = 4.5
    opacity: float = 1.0
    width: float = 2.0
    step: bool = False  # draw the line as a staircase (running best)
    tips: Sequence[str] | None = None
    marked: Sequence[bool] | None = None
    stem: float | None = None  # draw a thin line from y = stem to each marked point (a lollipop)
    legend: bool = True


@dataclass
class Bar:
    name: str
    values: Sequence[float | None]  # one per group
    color: str = PALETTE[0]
    marks: Sequence[float | None] | None = None  # e.g. the ideal value, drawn as a tick on the bar
    tips: Sequence[str] | None = None


@dataclass
class HLine:
    y: float
    label: str
    color: str = "#555555"
    dash: str = "6 4"


@dataclass
class Note:
    """A text label at the top of the plot, centred on `x` (e.g. which budget a cluster of points is)."""

    x: float
    text: str


@dataclass
class _Frame:
    width: int = 640
    height: int = 340
    left: int = 62
    right: int = 16
    top: int = 14
    bottom: int = 46

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


@dataclass
class _Scale:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi
    log: bool = False
    ticks: list[float] = field(default_factory=list)

    def __call__(self, v: float) -> float:
        if self.log:
            v, lo, hi = math.log10(max(v, 1e-300)), math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return self.a + (v - lo) / ((hi - lo) or 1.0) * (self.b - self.a)

    def invert(self, px: float) -> float:
        lo, hi = (math.log10(self.lo), math.log10(self.hi)) if self.log else (self.lo, self.hi)
        v = lo + (px - self.a) / ((self.b - self.a) or 1.0) * (hi - lo)
        return 10**v if self.log else v


# --- helpers ---------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
    """A rounded domain [lo', hi'] covering [lo, hi] and ticks at 1 / 2 / 5 x 10^k steps."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    lo2, hi2 = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    n = round((hi2 - lo2) / step)
    return lo2, hi2, [round(lo2 + i * step, 12) for i in range(n + 1)]


def ticks_within(lo: float, hi: float, count: int = 5) -> list[float]:
    """Ticks at a 1 / 2 / 5 x 10^k step that lie inside [lo, hi]."""
    _, _, ticks = nice_ticks(lo, hi, count)
    return [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


def log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """A log domain covering [lo, hi]: whole decades with a tick each, or, for data within about one
    decade, the 1 / 2 / 5 steps around it (so a narrow range is not squeezed into a corner)."""
    lo = max(lo, 1e-12)
    hi = max(hi, lo * 1.0001)
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b - a > 2:
        return 10.0**a, 10.0**b, [10.0**k for k in range(a, b + 1)]
    steps = [m * 10.0**k for k in range(a - 1, b + 1) for m in (1, 2, 5)]
    dlo = max(v for v in steps if v <= lo * (1 + 1e-9))
    dhi = min(v for v in steps if v >= hi * (1 - 1e-9))
    if dhi <= dlo:
        dhi = min(v for v in steps if v > dlo)
    return dlo, dhi, [v for v in steps if dlo <= v <= dhi]


def auto_format(step: float) -> Fmt:
    digits = max(0, -math.floor(math.log10(step)) if step > 0 else 0)
    return lambda v: f"{v:.{min(digits, 6)}f}"


@dataclass(frozen=True)
class percent:  # a class so a chart can ask for more digits; called like a function: x_format=percent()
    """0.3 -> "30%". On an axis whose ticks it would print alike, charts give it more digits."""

    digits: int = 0

    def __call__(self, v: float) -> str:
        return f"{100 * v:.{self.digits}f}%"


def _distinct(fmt: Fmt, ticks: Sequence[float]) -> Fmt:
    """A percent format with enough digits (up to 3) that every tick prints exactly, e.g. 37.5%, not 38%."""
    while isinstance(fmt, percent) and fmt.digits < 3 and any(
            abs(float(fmt(t)[:-1]) - 100 * t) > 1e-6 for t in ticks):
        fmt = percent(fmt.digits + 1)
    return fmt


def short_number(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:g}"


def _attrs(**kw) -> str:
    return " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in kw.items() if v is not None)


def _text(x, y, s, anchor="middle", size=FONT, cls=None, fill=None) -> str:
    style = f"fill:{fill}" if fill else None  # a style beats the page's CSS; a fill attribute would not
    return (f"<text {_attrs(x=f'{x:.1f}', y=f'{y:.1f}', text_anchor=anchor, font_size=size, class_=cls, style=style)}>"
            f"{escape(s)}</text>")


def _marker(kind: str, x: float, y: float, r: float, color: str, tip: str | None, series: str, opacity: float) -> str:
    title = f"<title>{escape(tip)}</title>" if tip else ""
    common = _attrs(fill=color, stroke="#ffffff", stroke_width="1", opacity=opacity, data_series=series, class_="mark")
    if kind == "square":
        shape = f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" {common}>'
        return shape + title + "</rect>"
    if kind == "diamond":
        pts = f"{x:.1f},{y - r * 1.3:.1f} {x + r * 1.3:.1f},{y:.1f} {x:.1f},{y + r * 1.3:.1f} {x - r * 1.3:.1f},{y:.1f}"
        return f'<polygon points="{pts}" {common}>{title}</polygon>'
    if kind == "triangle":
        pts = f"{x:.1f},{y - r * 1.4:.1f} {x + r * 1.25:.1f},{y + r * 0.8:.1f} {x - r * 1.25:.1f},{y + r * 0.8:.1f}"
        return f'<polygon points="{pts}" {common}>{title}</polygon>'
    if kind == "star":
        pts = []
        for i in range(10):
            rr = r * 1.8 if i % 2 == 0 else r * 0.8
            a = -math.pi / 2 + i * math.pi / 5
            pts.append(f"{x + rr * math.cos(a):.1f},{y + rr * math.sin(a):.1f}")
        return f'<polygon points="{" ".join(pts)}" {common}>{title}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {common}>{title}</circle>'


@dataclass
class _Key:
    """One legend entry: the series name (for highlighting), the text shown, and how it is drawn."""

    name: str
    label: str
    color: str
    marker: str = "none"  # a marker kind, "none", or "bar"
    dash: str = ""
    line: bool = True


def swatch(color: str, marker: str = "none", dash: str = "", line: bool = True, name: str = "") -> Markup:
    """A series' legend picture (28 x 14 px) on its own, e.g. beside a method's name in a table."""
    return Markup(_swatch(_Key(name, name, color, marker, dash, line)))


def _swatch(key: _Key) -> str:
    """The legend's picture of a series: its line (with its dash) and its marker, 28 x 14 px."""
    parts = []
    if key.marker == "bar":
        parts.append(f'<rect x="8" y="1" width="12" height="12" rx="1.5" fill="{escape(key.color)}"/>')
    else:
        if key.line:
            dash = f' stroke-dasharray="{escape(key.dash)}"' if key.dash else ""
            parts.append(f'<line x1="1" x2="27" y1="7" y2="7" stroke="{escape(key.color)}" stroke-width="2.2"{dash}/>')
        if key.marker != "none":
            parts.append(_marker(key.marker, 14, 7, 3.6, key.color, None, key.name, 1.0).replace(' class="mark"', ""))
    return f'<svg class="swatch" width="28" height="14" viewBox="0 0 28 14" aria-hidden="true">{"".join(parts)}</svg>'


def _figure(name: str, title: str, svg: str, legend: list[_Key], caption: str | None) -> Markup:
    seen, items = set(), []
    for key in legend:
        if key.label in seen:  # several series of one name (e.g. one per budget) share an entry
            continue
        seen.add(key.label)
        items.append(f'<li data-series="{escape(key.name)}">{_swatch(key)}{escape(key.label)}</li>')
    legend_html = f'<ul class="legend">{"".join(items)}</ul>' if items else ""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Markup(f'<figure class="chart" data-chart="{escape(name)}"><h4>{escape(title)}</h4>{svg}{legend_html}{cap}'
                  "</figure>")


def _svg(frame: _Frame, body: str, label: str) -> str:
    return (f'<svg class="chart-svg" viewBox="0 0 {frame.width} {frame.height}" role="img" '
            f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">'
            f"{body}</svg>")


def _axes(frame: _Frame, xs: _Scale, ys: _Scale, x_fmt: Fmt, y_fmt: Fmt, x_label: str, y_label: str,
          x_ticks_labels: dict[float, str] | None = None) -> str:
    out = []
    x0, x1, y0, y1 = frame.left, frame.width - frame.right, frame.top + frame.plot_h, frame.top
    for t in ys.ticks:
        y = ys(t)
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(_text(x0 - 6, y + 4, y_fmt(t), anchor="end", cls="tick"))
    for t in xs.ticks:
        x = xs(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}" class="grid grid-x"/>')
        label = x_ticks_labels.get(t, "") if x_ticks_labels is not None else x_fmt(t)
        out.append(_text(x, y0 + 16, label, cls="tick"))
    out.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" class="axis"/>')
    out.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" class="axis"/>')
    out.append(_text(frame.left + frame.plot_w / 2, frame.height - 8, x_label, cls="axis-label"))
    cy = frame.top + frame.plot_h / 2
    out.append(f'<text x="14" y="{cy:.1f}" transform="rotate(-90 14 {cy:.1f})" text-anchor="middle" '
               f'font-size="{FONT}" class="axis-label">{escape(y_label)}</text>')
    return "".join(out)


# --- charts ----------------------------------------------------------------------------------------


def xy_chart(
    name: str,
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_format: Fmt | None = None,
    y_format: Fmt | None = None,
    x_domain: tuple[float, float] | None = None,
    y_domain: tuple[float, float] | None = None,
    log_y: bool = False,
    hlines: Sequence[HLine] = (),
    notes: Sequence[Note] = (),
    integer_x: bool = False,
    caption: str | None = None,
    width: int = 640,
    height: int = 340,
) -> Markup:
    """Points and lines. Empty series are skipped; with no point at all the figure says so."""
    frame = _Frame(width=width, height=height)
    pts = [(x, y) for s in series for x, y in s.points if _finite(x) and _finite(y) and (not log_y or y > 0)]
    if not pts:
        return _empty(name, title, caption)
    xs_ = [p[0] for p in pts]
    ys_ = [p[1] for p in pts] + [h.y for h in hlines if _finite(h.y) and (not log_y or h.y > 0)]
    if x_domain is not None:  # exactly this domain, ticks inside it
        xlo, xhi = x_domain
        xt = ticks_within(xlo, xhi, 8)
    else:
        xlo, xhi = min(xs_), max(xs_)
        pad = (xhi - xlo) * 0.05 or 0.05
        # no axis below 0 for data >= 0
        xlo, xhi, xt = nice_ticks(xlo - pad if xlo - pad >= 0 or xlo < 0 else 0.0, xhi + pad, 6)
    if integer_x:
        xt = [t for t in xt if abs(t - round(t)) < 1e-9]
    if log_y:
        ylo, yhi, yt = log_ticks(*(y_domain or (min(ys_), max(ys_))))
    elif y_domain is not None:
        ylo, yhi = y_domain
        yt = ticks_within(ylo, yhi, 5)
    else:
        ylo, yhi = min(ys_), max(ys_)
        pad = (yhi - ylo) * 0.08 or 0.05
        ylo, yhi, yt = nice_ticks(ylo - pad, yhi + pad, 5)
    xs = _Scale(xlo, xhi, frame.left, frame.left + frame.plot_w, ticks=xt)
    ys = _Scale(ylo, yhi, frame.top + frame.plot_h, frame.top, log=log_y, ticks=yt)
    x_fmt = _distinct(x_format or auto_format((xt[1] - xt[0]) if len(xt) > 1 else 1.0), xt)
    y_fmt = _distinct(y_format or (short_number if log_y else auto_format((yt[1] - yt[0]) if len(yt) > 1 else 1.0)), yt)
    body = [_axes(frame, xs, ys, x_fmt, y_fmt, x_label, y_label)]
    for note in notes:
        if _finite(note.x) and xlo <= note.x <= xhi:
            body.append(_text(xs(note.x), frame.top + 11, note.text, cls="note"))
    for h in hlines:
        if not _finite(h.y) or (log_y and h.y <= 0):
            continue
        y = ys(h.y)
        dash = f' stroke-dasharray="{h.dash}"' if h.dash else ""
        body.append(f'<g data-series="{escape(h.label)}" class="hline">'
                    f'<line x1="{frame.left}" x2="{frame.left + frame.plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{h.color}" stroke-width="1.5"{dash}><title>{escape(h.label)}: '
                    f'{escape(y_fmt(h.y))}</title></line>'
                    + _text(frame.left + frame.plot_w - 4, y - 5, h.label, anchor="end", cls="hline-label",
                            fill=h.color)
                    + "</g>")
    body.append(f'<clipPath id="clip-{escape(name)}"><rect x="{frame.left}" y="{frame.top}" width="{frame.plot_w}" '
                f'height="{frame.plot_h}"/></clipPath>')
    drawn = [[(i, xs(x), ys(y)) for i, (x, y) in enumerate(s.points)
              if _finite(x) and _finite(y) and (not log_y or y > 0)] for s in series]
    shared = _coinciding(series, drawn)
    placed: list[tuple[int, float, float, float]] = []  # markers so far: series, x, y, size
    legend = []
    for k, (s, keep) in enumerate(zip(series, drawn, strict=True)):
        marks = [(i, x, y) for i, x, y in keep if s.marker != "none" and (s.marked is None or s.marked[i])]
        draws_line = s.line and len(keep) > 1
        if not draws_line and not marks:
            continue
        group = shared.get(k, [k])
        rank = group.index(k)  # 0 for a series drawn on its own
        others = [series[j].name for j in group if j != k]
        attrs = f' data-coincides="{escape("; ".join(others))}"' if others else ""
        g = [f'<g data-series="{escape(s.name)}" class="series"{attrs}>']
        if draws_line:
            coords = []
            for j, (_, x, y) in enumerate(keep):
                if s.step and j > 0:
                    coords.append(f"{x:.1f},{keep[j - 1][2]:.1f}")
                coords.append(f"{x:.1f},{y:.1f}")
            if others:  # one line, its dashes alternating between the coinciding series' colours
                n, seg = len(group), 7.0
                dash = f' stroke-dasharray="{seg:g} {seg * (n - 1):g}" stroke-dashoffset="{(n - rank) % n * seg:g}"'
                width = max(series[j].width for j in group)
            else:
                dash, width = (f' stroke-dasharray="{s.dash}"' if s.dash else ""), s.width
            g.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{s.color}" stroke-width="{width}" '
                     f'stroke-linejoin="round" opacity="{s.opacity}" clip-path="url(#clip-{escape(name)})"{dash} '
                     'class="line"/>')
        if s.stem is not None and _finite(s.stem):
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            g += [f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ys(s.stem):.1f}" y2="{y:.1f}" stroke="{s.color}" '
                  f'stroke-width="1.5"{dash} class="stem"/>' for _, x, y in marks]
        for i, x, y in marks:
            # a marker on top of another series' is drawn smaller, so each shows inside the one beneath it
            below = [size for j, px, py, size in placed if j != k and math.hypot(px - x, py - y) < size]
            size = min([s.size] + [0.65 * b for b in below])
            placed.append((k, x, y, size))
            tip = (s.tips[i] if s.tips and i < len(s.tips)
                   else f"{s.name}: ({x_fmt(xs.invert(x))}, {y_fmt(ys.invert(y))})")
            g.append(_marker(s.marker, x, y, size, s.color, tip, s.name, s.opacity))
        g.append("</g>")
        body.append("".join(g))
        if s.legend:
            label = s.name + (f" (same values as {series[group[0]].name})" if rank else "")
            legend.append(_Key(s.name, label, s.color, s.marker, s.dash, draws_line))
    legend += [_Key(h.label, h.label, h.color, "none", h.dash) for h in hlines if _finite(h.y)]
    return _figure(name, title, _svg(frame, "".join(body), title), legend, caption)


def _coinciding(series: Sequence[Series], drawn: list[list[tuple[int, float, float]]]) -> dict[int, list[int]]:
    """Series whose lines run through exactly the same pixels (to 0.1 px): series index -> its group, in
    drawing order. (Markers alone never hide each other: `xy_chart` shrinks a marker drawn on another.)"""
    by_coords: dict[tuple, list[int]] = {}
    for k, (s, keep) in enumerate(zip(series, drawn, strict=True)):
        if s.line and len(keep) > 1:
            by_coords.setdefault(tuple((round(x, 1), round(y, 1)) for _, x, y in keep), []).append(k)
    return {k: group for group in by_coords.values() if len(group) > 1 for k in group}


def bar_chart(
    name: str,
    groups: Sequence[str],
    bars: Sequence[Bar],
    *,
    title: str,
    y_label: str,
    x_label: str = "",
    y_format: Fmt | None = None,
    baseline: float | None = None,
    baseline_label: str = "",
    mark_label: str = "ideal",
    caption: str | None = None,
    width: int = 640,
    height: int = 320,
) -> Markup:
    """Grouped bars: one cluster per group, one bar per `Bar` in it; `marks` as short black ticks."""
    frame = _Frame(width=width, height=height)
    values = [v for b in bars for v in b.values if _finite(v)]
    values += [m for b in bars for m in (b.marks or []) if _finite(m)]
    if not values or not groups:
        return _empty(name, title, caption)
    lo = min(values + [0.0] + ([baseline] if baseline is not None else []))
    hi = max(values + ([baseline] if baseline is not None else []))
    lo, hi, yt = nice_ticks(lo, hi + (hi - lo) * 0.05, 5)
    ys = _Scale(lo, hi, frame.top + frame.plot_h, frame.top, ticks=yt)
    y_fmt = y_format or auto_format((yt[1] - yt[0]) if len(yt) > 1 else 1.0)
    xs = _Scale(0, len(groups), frame.left, frame.left + frame.plot_w, ticks=[])
    body = [_axes(frame, xs, ys, str, y_fmt, x_label, y_label)]
    slot = frame.plot_w / len(groups)
    bw = slot * 0.8 / max(1, len(bars))
    for gi, group in enumerate(groups):
        body.append(_text(frame.left + slot * (gi + 0.5), frame.top + frame.plot_h + 16, group, cls="tick"))
    zero = ys(max(lo, 0.0) if lo <= 0 <= hi else lo)
    for bi, b in enumerate(bars):
        g = [f'<g data-series="{escape(b.name)}" class="series">']
        for gi, v in enumerate(b.values):
            if not _finite(v):
                continue
            x = frame.left + slot * gi + slot * 0.1 + bw * bi
            y = ys(v)
            tip = b.tips[gi] if b.tips and gi < len(b.tips) else f"{b.name}, {groups[gi]}: {y_fmt(v)}"
            g.append(f'<rect x="{x:.1f}" y="{min(y, zero):.1f}" width="{max(bw - 2, 1):.1f}" '
                     f'height="{abs(zero - y):.1f}" fill="{b.color}" class="mark" data-series="{escape(b.name)}">'
                     f"<title>{escape(tip)}</title></rect>")
            m = b.marks[gi] if b.marks and gi < len(b.marks) else None
            if _finite(m):
                mark_tip = f"{b.name}, {groups[gi]}: {mark_label} {y_fmt(m)}"
                g.append(f'<line x1="{x - 1:.1f}" x2="{x + bw - 1:.1f}" y1="{ys(m):.1f}" y2="{ys(m):.1f}" '
                         f'stroke="#111" stroke-width="2.5" class="bar-mark"><title>{escape(mark_tip)}</title></line>')
        g.append("</g>")
        body.append("".join(g))
    if baseline is not None:
        y = ys(baseline)
        body.append(f'<line x1="{frame.left}" x2="{frame.left + frame.plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555" '
                    f'stroke-dasharray="6 4" stroke-width="1.5"><title>{escape(baseline_label)}</title></line>')
    legend = [_Key(b.name, b.name, b.color, "bar") for b in bars]
    if any(b.marks for b in bars):
        legend.append(_Key(mark_label, mark_label, "#111111"))
    if baseline is not None and baseline_label:
        legend.append(_Key(baseline_label, baseline_label, "#555555", dash="6 4"))
    return _figure(name, title, _svg(frame, "".join(body), title), legend, caption)


def heatmap(
    name: str,
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    title: str,
    x_label: str,
    value_format: Fmt = lambda v: f"{v:.3g}",
    log: bool = False,
    caption: str | None = None,
    tips: Sequence[Sequence[str]] | None = None,
    width: int = 640,
    domain: tuple[float, float] | None = None,
    scale: str = "viridis",
    row_marks: Sequence[tuple[str, str]] | None = None,
    empty_text: str = "no value",
) -> Markup:
    """A grid of coloured cells (log-scaled if `log`), values written in the cells when they fit.
    `scale`: "viridis", or "grey" (white at the top of the domain, dark at the bottom: for pages whose
    colours mean something else). `domain`: the values at the two ends of the scale (default: the data's).
    `row_marks`: a (colour, marker) drawn before each row's label. Cells without a value say `empty_text`."""
    finite = [v for row in values for v in row if _finite(v) and (not log or v > 0)]
    if not finite or not rows or not cols:
        return _empty(name, title, caption)
    mark_w = 18 if row_marks else 0
    label_w = min(220, 14 + 7 * max(len(r) for r in rows)) + mark_w
    cell_h = 26
    frame = _Frame(width=width, height=cell_h * len(rows) + 88, left=label_w, right=16, top=10, bottom=78)
    cw = frame.plot_w / len(cols)
    lo, hi = domain or (min(finite), max(finite))
    fill = colormap if scale == "viridis" else greymap
    if log:
        lo, hi = math.log10(lo), math.log10(hi)

    def norm(v):
        if log and v <= 0:
            return 0.0  # zero on a log scale: drawn at the bottom of the scale, labelled with its value
        t = math.log10(v) if log else v
        return 0.5 if hi == lo else (t - lo) / (hi - lo)

    show_values = cw >= 34
    body = []
    for ri, row in enumerate(rows):
        y = frame.top + ri * cell_h
        if row_marks:  # marker, then the label from the left edge
            color, kind = row_marks[ri]
            body.append(_marker(kind, 9, y + cell_h / 2, 4.5, color, None, row, 1.0).replace(' class="mark"', ""))
            body.append(_text(mark_w + 4, y + cell_h / 2 + 4, row, anchor="start", cls="tick"))
        else:
            body.append(_text(frame.left - 6, y + cell_h / 2 + 4, row, anchor="end", cls="tick"))
        for ci, v in enumerate(values[ri]):
            x = frame.left + ci * cw
            if not _finite(v):
                tip = tips[ri][ci] if tips else f"{row}, {x_label} {cols[ci]}: {empty_text}"
                body.append(f'<rect x="{x:.1f}" y="{y}" width="{cw - 1:.1f}" height="{cell_h - 1}" fill="#ffffff" '
                            f'stroke="#d9dee6" class="cell"><title>{escape(tip)}</title></rect>')
                continue
            t = min(1.0, max(0.0, norm(v)))
            tip = tips[ri][ci] if tips else f"{row}, {x_label} {cols[ci]}: {value_format(v)}"
            body.append(f'<rect x="{x:.1f}" y="{y}" width="{cw - 1:.1f}" height="{cell_h - 1}" fill="{fill(t)}" '
                        f'class="cell mark"><title>{escape(tip)}</title></rect>')
            if show_values:
                body.append(_text(x + cw / 2, y + cell_h / 2 + 4, value_format(v), size=10,
                                  fill="#111" if t > 0.55 else "#fff", cls="cell-value"))
    y_axis = frame.top + len(rows) * cell_h
    step = next(n for n in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, len(cols)) if n * cw >= 20)
    for ci, col in enumerate(cols):
        if ci % step == 0:
            body.append(_text(frame.left + (ci + 0.5) * cw, y_axis + 14, col, cls="tick"))
    body.append(_text(frame.left + frame.plot_w / 2, y_axis + 30, x_label, cls="axis-label"))
    # colour scale
    gid = f"grad-{escape(name)}"
    stops = "".join(f'<stop offset="{i / 8:.3f}" stop-color="{fill(i / 8)}"/>' for i in range(9))
    sx, sw, sy = frame.left, min(260, frame.plot_w), y_axis + 42
    body.append(f'<defs><linearGradient id="{gid}">{stops}</linearGradient></defs>')
    body.append(f'<rect x="{sx}" y="{sy}" width="{sw}" height="10" fill="url(#{gid})" stroke="#b8bfca" class="scale"/>')
    raw_lo, raw_hi = (10**lo, 10**hi) if log else (lo, hi)
    body.append(_text(sx, sy + 24, value_format(raw_lo), anchor="start", cls="tick"))
    body.append(_text(sx + sw, sy + 24, value_format(raw_hi), anchor="end", cls="tick"))
    if log:
        body.append(_text(sx + sw + 8, sy + 9, "(log scale)", anchor="start", cls="tick"))
    return _figure(name, title, _svg(frame, "".join(body), title), [], caption)


def colormap(t: float) -> str:
    """viridis at t in [0, 1], linearly interpolated between 9 stops."""
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    rgb = [round(int(a[k : k + 2], 16) * (1 - f) + int(b[k : k + 2], 16) * f) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def greymap(t: float) -> str:
    """From dark grey (#2b2f36) at t = 0 to light grey (#cdd2d9) at t = 1: every value stands out from
    the white of an empty cell."""
    t = min(1.0, max(0.0, t))
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in ((0x2B, 0xCD), (0x2F, 0xD2), (0x36, 0xD9)))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _empty(name: str, title: str, caption: str | None) -> Markup:
    return Markup(f'<figure class="chart chart-empty" data-chart="{escape(name)}"><h4>{escape(title)}</h4>'
                  f'<p class="empty">No data for this chart in this run.</p>'
                  + (f"<figcaption>{escape(caption)}</figcaption>" if caption else "") + "</figure>")
