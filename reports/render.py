"""Render the HTML reports: one self-contained page per model, and an index of the models.

    python -m reports.render page --manifest results/demo-mamba2/report-manifest.json \
        --out reports-out/demo-mamba2.html
    python -m reports.render index --out reports-out/index.html results/*/report-manifest.json

A page holds everything it needs: CSS, a small script (legend highlighting) and the charts as inline
SVG; it loads nothing from the network. It links to the policy files (relative paths) and shows
each file's JSON inline. `render_page` / `render_index` are the same from Python. The manifest's
fields are described in reports/data.py; this package needs no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from utrc.io import atomic_write_text

from . import page, svg
from .data import ReportError, load_run, read_manifest

TEMPLATES = Path(__file__).resolve().parent / "templates"
# The index's models: Paul Tol's "muted" colours that no method uses on the models' pages.
MODEL_COLORS = ["#332288", "#117733", "#882255", "#999933", "#AA4499", "#DDCC77"]
MODEL_MARKERS = ["circle", "square", "diamond", "triangle"]


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = page.pct
    env.filters["num"] = lambda v, fmt="{:.3g}": "–" if v is None else fmt.format(v)
    env.globals["inline"] = lambda name: Markup((TEMPLATES / name).read_text())  # our own CSS / JS, verbatim
    env.globals["chip"] = lambda method: svg.swatch(page.COLORS[method], page.MARKERS[method], page.DASHES[method])
    return env


def _root_of(manifest_path: Path, manifest: dict) -> Path:
    """Relative paths in a manifest are relative to where it was written from (`root`, default the cwd)."""
    return Path(manifest.get("root") or os.getcwd())


def render_page(manifest_path: str | Path, out: str | Path, root: str | Path | None = None) -> Path:
    """Write the page of the run a manifest describes; returns the page's path."""
    manifest_path, out = Path(manifest_path), Path(out)
    manifest = read_manifest(manifest_path)
    run = load_run(manifest, root if root is not None else _root_of(manifest_path, manifest))
    out.parent.mkdir(parents=True, exist_ok=True)
    context = page.model_page(run, out.parent)
    html = environment().get_template("model.html.j2").render(
        title=f"UTRC policies: {run.ref}", generated=_now(), **context)
    atomic_write_text(out, html)
    return out


def render_index(manifests: list[str | Path], out: str | Path, root: str | Path | None = None) -> Path:
    """Write the index of several models' pages (each page is the manifest's model name + .html beside it)."""
    out = Path(out)
    entries = []
    for m in manifests:
        manifest = read_manifest(m)
        run = load_run(manifest, root if root is not None else _root_of(Path(m), manifest))
        entries.append(page.index_entry(run, f"{run.name}.html"))
    series = []
    for i, e in enumerate(entries):  # colours mean models here, from a palette no method uses
        pts = [(r["nominal"], r["average"]) for r in e["rows"]
               if r["method"] in ("dense", "utrc-searched") and r["average"] is not None and r["nominal"] is not None]
        series.append(svg.Series(e["model"]["name"], sorted(pts), color=MODEL_COLORS[i % len(MODEL_COLORS)],
                                 marker=MODEL_MARKERS[i % len(MODEL_MARKERS)]))
    chart = svg.xy_chart("index-accuracy", series, title="Searched policies: average accuracy against FLOPs reduction",
                         x_label="nominal FLOPs reduction", y_label="average accuracy", x_format=svg.percent(),
                         y_format=svg.percent(),
                         caption="One line per model: dense at 0 %, then the searched policy of "
                                                         "each budget. Accuracies are only comparable within a model.")
    html = environment().get_template("index.html.j2").render(title="UTRC policies: index", generated=_now(),
                                                              entries=entries, chart=chart)
    atomic_write_text(out, html)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m reports.render", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("page", help="one model's page")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--root", default=None, help="what relative paths in the manifest are relative to (default: cwd)")
    i = sub.add_parser("index", help="the index of several models' pages")
    i.add_argument("manifests", nargs="+")
    i.add_argument("--out", required=True)
    i.add_argument("--root", default=None)
    args = ap.parse_args(argv)
    try:
        if args.command == "page":
            path = render_page(args.manifest, args.out, args.root)
        else:
            path = render_index(args.manifests, args.out, args.root)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
