"""What one model's page shows, computed from a `data.Run`: the summary table, the charts, the tables.

`model_page(run, out_dir)` returns the template's context (plain dicts, lists and SVG markup).
`index_entry(run, page_href)` returns the index's row for the model. No file is read here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from utrc.names import BENCHMARKS

from . import svg
from .data import METHODS, Run, paper_reference

LABELS = {
    "dense": "Dense",
    "tome": "ToMe (PuMer)",
    "evit": "EViT",
    "utrc-paper": "UTRC, paper schedule",
    "utrc-searched": "UTRC, searched",
}
COLORS = {"dense": "#555555", "tome": "#EE7733", "evit": "#009988", "utrc-paper": "#0077BB", "utrc-searched": "#CC3311"}
MARKERS = {"dense": "circle", "tome": "diamond", "evit": "square", "utrc-paper": "circle", "utrc-searched": "star"}

# The six benchmarks in the paper's column order (utrc.names), with their demo stand-ins.
TASK_ORDER = tuple(BENCHMARKS)
TASK_LABELS = {"lambada_openai": "LAMBADA", "hellaswag": "HellaSwag", "piqa": "PIQA", "arc_easy": "ARC-e",
               "arc_challenge": "ARC-c", "winogrande": "WinoGrande"}
DEMO_PREFIX = "demo_"


def budget_label(budget: float) -> str:
    """0.3 -> "30 %", 0.125 -> "12.5 %"."""
    return f"{round(100 * budget, 4):g} %"


def pct(v, digits: int = 1) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def task_key(task: str) -> tuple:
    base = task[len(DEMO_PREFIX):] if task.startswith(DEMO_PREFIX) else task
    base = "lambada_openai" if base == "lambada" else base
    return (TASK_ORDER.index(base) if base in TASK_ORDER else len(TASK_ORDER), task)


def task_label(task: str) -> str:
    base = task[len(DEMO_PREFIX):] if task.startswith(DEMO_PREFIX) else task
    base = "lambada_openai" if base == "lambada" else base
    label = TASK_LABELS.get(base, task)
    return label


def realized_reduction(doc: dict) -> float | None:
    """1 - sum of reduced / sum of dense FLOPs over every request of every task of a results doc."""
    dense = reduced = 0.0
    for t in doc["tasks"].values():
        r = t.get("realized") or {}
        dense += r.get("dense_flops") or 0.0
        reduced += r.get("reduced_flops") or 0.0
    return 1 - reduced / dense if dense > 0 else None


def _eval(run: Run, method: str, tag: str) -> dict | None:
    return run.evaluations.get(method, {}).get("" if method == "dense" else tag)


def _profile_row(run: Run, method: str, tag: str) -> dict | None:
    """The profile's row of (method, budget): keyed by the policy path given to utrc.profile."""
    doc = run.profiles.get(tag)
    entry = run.policies.get(method, {}).get(tag)
    if not doc or not entry:
        return None
    results = doc.get("results", {})
    path = entry[0]
    for key, row in results.items():
        if key == path or Path(key).name == Path(path).name:
            return row
    return None


def _href(run: Run, path: str, out_dir: Path) -> str:
    target = Path(path) if Path(path).is_absolute() else (run.root / path)
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


# --- the summary table ---------------------------------------------------------------------------


def tasks_of(run: Run) -> list[str]:
    tasks = {t for by_tag in run.evaluations.values() for doc in by_tag.values() for t in doc["tasks"]}
    return sorted(tasks, key=task_key)


def summary(run: Run, out_dir: Path) -> dict:
    """Rows in the paper's shape: dense, then per budget tome / evit / paper schedule / searched."""
    tasks = tasks_of(run)
    rows = []
    dense_doc = _eval(run, "dense", "")
    if dense_doc or "dense" in run.evaluations:
        rows.append(_row(run, "dense", "", None, dense_doc, tasks, out_dir))
    for tag, budget in run.budgets.items():
        group = [_row(run, m, tag, budget, _eval(run, m, tag), tasks, out_dir) for m in METHODS[1:]
                 if m in run.evaluations or m in run.policies]
        best = max((r["average"] for r in group if r["average"] is not None), default=None)
        for r in group:
            r["best"] = best is not None and r["average"] == best
        rows += group
    profiled = any(r.get("prefill_speedup") is not None for r in rows)
    memory = any(r.get("memory_reduction") is not None for r in rows)
    generation = any(r.get("generate_speedup") is not None for r in rows)
    ppl_task = next((t for t in tasks if task_key(t)[0] == 0), None)
    return {"tasks": [{"name": t, "label": task_label(t)} for t in tasks], "rows": rows, "profiled": profiled,
            "demo": bool(tasks) and all(t.startswith(DEMO_PREFIX) for t in tasks),
            "memory": memory, "generation": generation, "ppl": ppl_task is not None,
            "profile_device": _profile_device(run)}


def _row(run: Run, method: str, tag: str, budget: float | None, doc: dict | None, tasks, out_dir) -> dict:
    policy = run.policies.get(method, {}).get(tag)
    row = {"method": method, "label": LABELS[method], "color": COLORS[method], "tag": tag, "budget": budget,
           "budget_label": budget_label(budget) if budget is not None else "",
           "evaluated": doc is not None, "scores": {}, "average": None, "ppl": None, "nominal": None, "realized": None,
           "dev_kl": None, "best": False, "policy_href": None, "policy_name": None}
    if policy:
        path, pdoc = policy
        row["policy_href"] = _href(run, path, out_dir)
        row["policy_name"] = Path(path).name
        row["dev_kl"] = (pdoc.get("measured") or {}).get("dev_kl")
        row["nominal"] = (pdoc.get("estimates") or {}).get("reduction")
    if doc:
        for t in tasks:
            row["scores"][t] = doc["tasks"].get(t, {}).get("score")
            extra = doc["tasks"].get(t, {}).get("paper_extra") or {}
            if "perplexity" in extra:
                row["ppl"] = extra["perplexity"]
        row["average"] = doc.get("average")
        row["nominal"] = doc.get("nominal", {}).get("reduction", row["nominal"])
        row["realized"] = realized_reduction(doc)
        row["realized_by_task"] = {t: doc["tasks"][t].get("realized_flops_reduction") for t in tasks if t in doc["tasks"]}
    if method == "dense":
        row["nominal"] = row["realized"] = 0.0
    prof = _profile_row(run, method, tag) if method != "dense" else None
    if prof:
        row["prefill_speedup"] = prof.get("prefill_speedup")
        row["ideal_speedup"] = prof.get("ideal_speedup")
        row["generate_speedup"] = prof.get("generate_speedup")
        row["memory_reduction"] = prof.get("peak_memory_reduction_all_logits")
    return row


def _profile_device(run: Run) -> str | None:
    doc = next(iter(run.profiles.values()), None)
    return doc.get("device") if doc else None


# --- charts ------------------------------------------------------------------------------------------


def accuracy_charts(run: Run, table: dict) -> list:
    rows = [r for r in table["rows"] if r["average"] is not None]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    charts = []
    for key, what in (("nominal", "nominal FLOPs reduction (2048-token prefill)"),
                      ("realized", "realized FLOPs reduction (on the tasks' own requests)")):
        series = []
        for m in METHODS[1:]:
            pts = [r for r in rows if r["method"] == m and r[key] is not None]
            if not pts:
                continue
            series.append(svg.Series(
                LABELS[m], [(r[key], r["average"]) for r in pts], color=COLORS[m], marker=MARKERS[m],
                size=6 if m == "utrc-searched" else 5, width=2.5 if m == "utrc-searched" else 1.8,
                dashed=m in ("tome", "evit"),
                tips=[f"{LABELS[m]}, {r['budget_label']} budget: average {pct(r['average'])} %, nominal reduction "
                      f"{pct(r['nominal'])} %, realized {pct(r['realized'])} %" for r in pts]))
        hl = [svg.HLine(dense["average"], f"dense {pct(dense['average'])} %", COLORS["dense"])] if dense else []
        charts.append(svg.xy_chart(
            f"accuracy-{key}", series, title=f"Average accuracy against {what.split(' (')[0]}",
            x_label=what, y_label="average accuracy", x_format=svg.percent(), y_format=svg.percent(), hlines=hl,
            caption="Up and to the right is better. Each point is one evaluated policy file; the dashed line is the "
                    "dense model." + (" Realized reductions are smaller where the scored suffix is long." if key == "realized" else ""),
        ))
    return charts


def keep_charts(run: Run) -> list[dict]:
    """Per budget: keep ratio per layer of each method, and the tokens each layer processes."""
    panels = []
    for tag, budget in run.budgets.items():
        series, token_series, n_layer = [], [], None
        for m in ("utrc-searched", "utrc-paper", "evit", "tome"):
            entry = run.policies.get(m, {}).get(tag)
            if not entry:
                continue
            pdoc = entry[1]
            n_layer = pdoc["model"]["n_layer"]
            keeps = [pdoc["layers"].get(str(l), {}).get("keep", 1.0) for l in range(n_layer)]
            reduced = {int(l) for l in pdoc["layers"]}
            tips = [f"{LABELS[m]}, layer {l}: keep {keeps[l]:.3f}" + ("" if l in reduced else " (not reduced)")
                    for l in range(n_layer)]
            series.append(svg.Series(LABELS[m], list(zip(range(n_layer), keeps)), color=COLORS[m], marker=MARKERS[m],
                                     size=5 if m == "utrc-searched" else 3.5, dashed=m in ("tome", "evit"),
                                     width=2.5 if m == "utrc-searched" else 1.5, tips=tips))
            doc = _eval(run, m, tag)
            tokens = (doc or {}).get("nominal", {}).get("tokens_per_layer")
            if tokens:
                seq = doc["nominal"].get("seq_len", tokens[0])
                token_series.append(svg.Series(
                    LABELS[m], [(l, t / seq) for l, t in enumerate(tokens)], color=COLORS[m], marker="none",
                    dashed=m in ("tome", "evit"), width=2.5 if m == "utrc-searched" else 1.5, step=True))
        if not series:
            continue
        panel = {"tag": tag, "budget": budget, "charts": [svg.xy_chart(
            f"keep-{tag}", series, title=f"Keep ratio per layer, {budget_label(budget)} budget", x_label="layer (block index)",
            y_label="keep ratio", y_domain=(0.45, 1.02), x_domain=(-0.5, n_layer - 0.5), integer_x=True,
            x_format=lambda v: f"{v:.0f}",
            caption="1.0 = the layer removes nothing. A keep of 0.5 removes the most a layer can (half its prefix).",
            width=560, height=300)]}
        if token_series:
            panel["charts"].append(svg.xy_chart(
                f"tokens-{tag}", token_series, title=f"Tokens each layer processes, {budget_label(budget)} budget",
                x_label="layer (block index)", y_label="share of the 2048 input tokens", y_domain=(0.0, 1.02),
                x_domain=(-0.5, n_layer - 0.5), integer_x=True, x_format=lambda v: f"{v:.0f}", y_format=svg.percent(),
                caption="After every reduction the following layers see fewer tokens; the area under a line is "
                        "roughly the work done.", width=560, height=300))
        panels.append(panel)
    return panels


def search_charts(run: Run) -> list:
    if not run.trials:
        return []
    front_pts, all_series, history = [], [], []
    for i, (tag, rows) in enumerate(sorted(run.trials.items(), key=lambda kv: run.budgets.get(kv[0], 0))):
        color = svg.PALETTE[i % len(svg.PALETTE)]
        name = budget_label(run.budgets[tag]) if tag in run.budgets else tag
        done = [r for r in rows if r.get("state") == "COMPLETE" and r.get("quality_loss") is not None]
        if not done:
            continue
        sampled = [r for r in done if r.get("origin") != "utrc-paper"]
        paper = [r for r in done if r.get("origin") == "utrc-paper"]
        best = min(done, key=lambda r: (r["quality_loss"], r["number"]))

        def tip(r, name=name):
            return (f"{name} study, trial {r['number']} ({r.get('origin')}): dev KL {r['quality_loss']:.4g}, nominal "
                    f"reduction {pct(r.get('nominal_reduction'))} %, {r.get('importance')}/{r.get('importance_source')}")

        all_series.append(svg.Series(f"{name} trials", [(r["nominal_reduction"], r["quality_loss"]) for r in sampled],
                                     color=color, line=False, size=3.5, opacity=0.55, tips=[tip(r) for r in sampled]))
        if paper:
            all_series.append(svg.Series(f"{name} paper schedule", [(r["nominal_reduction"], r["quality_loss"]) for r in paper],
                                         color=color, line=False, marker="square", size=5, tips=[tip(r) for r in paper]))
        all_series.append(svg.Series(f"{name} best", [(best["nominal_reduction"], best["quality_loss"])], color=color,
                                     line=False, marker="star", size=6, tips=[tip(best)], legend=False))
        front_pts += [(r["nominal_reduction"], r["quality_loss"]) for r in done]
        running, best_so_far = [], math.inf
        for r in sorted(done, key=lambda r: r["number"]):
            best_so_far = min(best_so_far, r["quality_loss"])
            running.append((r["number"], best_so_far))
        history.append(svg.Series(f"{name} trials", [(r["number"], r["quality_loss"]) for r in done], color=color,
                                  line=False, size=3, opacity=0.45, tips=[tip(r) for r in done], legend=False))
        history.append(svg.Series(f"{name} best so far", running, color=color, marker="none", step=True, width=2.5))
    front = pareto_front(front_pts)
    all_series.insert(0, svg.Series("Pareto front", front, color="#111111", marker="none", step=True, width=1.5))
    return [
        svg.xy_chart("search-front", all_series, title="Search: quality loss against FLOPs reduction",
                     x_label="nominal FLOPs reduction", y_label="dev KL from dense (log)", log_y=True,
                     x_format=svg.percent(),
                     caption="Every completed trial of every budget's study. Stars: the exported (best) policy; squares: "
                             "the paper's schedule on the same budget; the black staircase: the Pareto front (no trial "
                             "is both better and cheaper)."),
        svg.xy_chart("search-history", history, title="Search history", x_label="trial number",
                     y_label="dev KL from dense (log)", log_y=True, integer_x=True, x_format=lambda v: f"{v:.0f}",
                     caption="Dots: each trial's quality loss; lines: the best so far. The first trials are the seeded "
                             "ones (paper schedule, calibration prior, uniform)."),
    ]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both axes (higher reduction, lower loss), ordered by reduction."""
    front, best = [], math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], p[1])):
        if y < best:
            front.append((x, y))
            best = y
    return sorted(front)


def calibration_charts(run: Run) -> list:
    rows = run.calibration_table
    if not rows:
        return []
    layers = sorted({int(r["layer"]) for r in rows})
    cols = [str(l) for l in layers]
    charts = []
    sens = [r for r in rows if r["kind"] == "sensitivity" and r["stat"] == "kl"]
    if sens:
        keys = sorted({(f"{r['metric']}/{r['source']}", r["keep"]) for r in sens}, key=lambda k: (k[0], -k[1]))
        grid = {(f"{r['metric']}/{r['source']}", r["keep"], int(r["layer"])): r["value"] for r in sens}
        charts.append(svg.heatmap(
            "calibration-sensitivity", [f"{p} keep {k:g}" for p, k in keys], cols,
            [[grid.get((p, k, l)) for l in layers] for p, k in keys], title="Sensitivity: KL from dense, one layer reduced",
            x_label="layer", log=True, value_format=lambda v: f"{v:.2g}",
            caption="UTRC at one layer alone, at each keep ratio. Dark = the model barely notices; bright = "
                    "reducing here hurts. The search's calibration prior removes more where it is dark."))
    signal = (run.calibration or {}).get("importance_signal", {})
    for kind, stat, name, title, log, caption in (
        ("importance", "rel_iqr", "calibration-signal", "Importance signal: spread of token scores", True,
         "Relative interquartile range of the per-token importance scores. Near zero, a metric ranks tokens by "
         "noise (e.g. l2 after Mamba-2's gated RMSNorm); such pairs are marked and left out of the search."),
        ("match", "q50", "calibration-match", "Median best-match similarity g(a)", False,
         "Cosine similarity of each less-important token to its best match: high values make merging cheap."),
    ):
        sel = [r for r in rows if r["kind"] == kind and r["stat"] == stat]
        if not sel:
            continue
        pairs = sorted({f"{r['metric']}/{r['source']}" for r in sel})
        grid = {(f"{r['metric']}/{r['source']}", int(r["layer"])): r["value"] for r in sel}
        labels = [p + ("  (uninformative)" if signal.get(p, {}).get("informative") is False else "") for p in pairs]
        charts.append(svg.heatmap(name, labels, cols, [[grid.get((p, l)) for l in layers] for p in pairs], title=title,
                                  x_label="layer", log=log, value_format=lambda v: f"{v:.2g}", caption=caption))
    return charts


def profile_section(run: Run, table: dict) -> dict | None:
    if not run.profiles:
        return None
    tags = list(run.budgets)
    methods = [m for m in ("tome", "evit", "utrc-paper", "utrc-searched") if any(_profile_row(run, m, t) for t in tags)]
    if not methods:
        return None
    rows = {(r["method"], r["tag"]): r for r in table["rows"]}
    groups = [budget_label(run.budgets[t]) for t in tags]
    charts = []
    for key, title, ideal in (("prefill_speedup", "Prefill speed-up over dense", True),
                              ("generate_speedup", "Generation speed-up over dense", False),
                              ("memory_reduction", "Peak memory reduction (all logits)", False)):
        bars = [svg.Bar(LABELS[m], [rows.get((m, t), {}).get(key) for t in tags], color=COLORS[m],
                        marks=[rows.get((m, t), {}).get("ideal_speedup") for t in tags] if ideal else None)
                for m in methods]
        if not any(v is not None for b in bars for v in b.values):
            continue
        pct_axis = key == "memory_reduction"
        charts.append(svg.bar_chart(
            f"profile-{key.replace('_', '-')}", groups, bars, title=title, x_label="FLOPs budget",
            y_label="reduction" if pct_axis else "speed-up (x)",
            y_format=svg.percent() if pct_axis else (lambda v: f"{v:.2f}"), baseline=None if pct_axis else 1.0,
            baseline_label="dense", mark_label="ideal (dense / reduced FLOPs)",
            caption="Measured in one process on the same inputs as dense." + (
                " Black ticks: the ideal speed-up the FLOPs model predicts." if ideal else "")))
    doc = next(iter(run.profiles.values()))
    return {"charts": charts, "device": doc.get("device"), "protocol": doc.get("protocol", {}),
            "dtype": doc.get("dtype"), "kernels": doc.get("mamba_ssm_kernels"),
            "cpu": not str(doc.get("device", "")).startswith(("NVIDIA", "AMD Instinct")) and "CPU" in str(doc.get("device"))}


def paper_section(run: Run) -> dict | None:
    ref = paper_reference(run.ref)
    if ref is None:
        return None
    rows = sorted(ref["results"], key=lambda r: (r["flops_reduction"], METHODS.index(r["method"])))
    series = []
    for m in METHODS:
        pts = [r for r in rows if r["method"] == m]
        dense = [r for r in rows if r["method"] == "dense"]
        if m == "dense" or not pts:
            continue
        pts = dense + pts  # every method starts from the dense point
        series.append(svg.Series(LABELS[m] + " (paper)", [(r["flops_reduction"], r["average"] / 100) for r in pts],
                                 color=COLORS[m], marker=MARKERS[m], dashed=True,
                                 tips=[f"paper: {r['method']} at {pct(r['flops_reduction'], 0)} %: average {r['average']} %"
                                       for r in pts]))
    chart = svg.xy_chart("paper-accuracy", series, title="The paper's reported averages (as published)",
                         x_label="FLOPs reduction", y_label="average accuracy", x_format=svg.percent(),
                         y_format=svg.percent(),
                         caption="Tables 1-2 of Zhan et al. (EMNLP 2024), produced with the authors' released evaluation "
                                 "code, which scores shifted positions: not comparable with the numbers above.")
    for r in rows:
        r["label"] = LABELS[r["method"]]
    return {"rows": rows, "efficiency": ref["efficiency"], "chart": chart, "tasks": list(TASK_LABELS.items())}


# --- policies, settings, versions ---------------------------------------------------------------------


def policy_files(run: Run, out_dir: Path) -> list[dict]:
    out = []
    for tag in run.budgets:
        for m in ("utrc-searched", "utrc-paper", "evit", "tome"):
            entry = run.policies.get(m, {}).get(tag)
            if not entry:
                continue
            path, pdoc = entry
            layers = ", ".join(f"{l}: {v['keep']:g}" for l, v in sorted(pdoc["layers"].items(), key=lambda kv: int(kv[0])))
            out.append({
                "method": m, "label": LABELS[m], "color": COLORS[m], "tag": tag, "name": Path(path).name, "path": path,
                "budget_label": budget_label(run.budgets[tag]),
                "href": _href(run, path, out_dir), "layers": layers, "importance": f"{pdoc['importance']}/{pdoc['importance_source']}",
                "prune_share": pdoc["prune_share"], "strategies": f"{pdoc['hidden_strategy']} / {pdoc['residual_strategy']}",
                "nominal": (pdoc.get("estimates") or {}).get("reduction"),
                "dev_kl": (pdoc.get("measured") or {}).get("dev_kl"),
                "json": json.dumps({k: v for k, v in pdoc.items() if k != "provenance"}, indent=1),
                "provenance": pdoc.get("provenance"),
            })
    return out


def versions(run: Run) -> dict[str, str]:
    found: dict[str, str] = {}
    docs = [d for by_tag in run.evaluations.values() for d in by_tag.values()]
    docs += list(run.profiles.values())
    docs += [p for by_tag in run.policies.values() for _, p in by_tag.values() if p.get("provenance")]
    for d in docs:
        v = d.get("versions") or (d.get("provenance") or {}).get("versions") or {}
        for k, val in v.items():
            found.setdefault(k, val)
    if run.calibration:
        for k, val in run.calibration.get("versions", {}).items():
            found.setdefault(k, val)
    for k, val in (run.manifest.get("workflow") or {}).items():
        found.setdefault(k, val)
    return dict(sorted(found.items()))


def model_info(run: Run) -> dict:
    pdoc = next((p for by_tag in run.policies.values() for _, p in by_tag.values()), None)
    doc = next((d for by_tag in run.evaluations.values() for d in by_tag.values()), None)
    info = {"ref": run.ref, "name": run.name}
    if pdoc:
        info.update(architecture=pdoc["model"]["architecture"], n_layer=pdoc["model"]["n_layer"],
                    d_model=pdoc["model"]["d_model"])
    if doc:
        info.update(device=doc.get("device_name"), dtype=doc.get("dtype"), date=doc.get("date"),
                    limit=doc.get("limit"), max_length=doc.get("max_length"))
    return info


def model_page(run: Run, out_dir: Path) -> dict:
    table = summary(run, out_dir)
    files = policy_files(run, out_dir)
    best = next((f for f in files[::-1] if f["method"] == "utrc-searched"), None)
    return {
        "model": model_info(run),
        "budgets": run.budgets,
        "summary": table,
        "accuracy_charts": accuracy_charts(run, table),
        "keep_panels": keep_charts(run),
        "search_charts": search_charts(run),
        "calibration_charts": calibration_charts(run),
        "calibration": run.calibration,
        "profile": profile_section(run, table),
        "paper": paper_section(run),
        "policy_files": files,
        "example_policy": best,
        "settings": json.dumps(run.manifest.get("settings", {}), indent=2),
        "versions": versions(run),
        "missing": run.missing,
    }


def index_entry(run: Run, page_href: str) -> dict:
    table = summary(run, Path("."))
    rows = table["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    per_budget = []
    for tag in run.budgets:
        group = [r for r in rows if r["tag"] == tag and r["average"] is not None]
        best = max(group, key=lambda r: r["average"], default=None)
        searched = next((r for r in group if r["method"] == "utrc-searched"), None)
        paper = next((r for r in group if r["method"] == "utrc-paper"), None)
        per_budget.append({"tag": tag, "label": budget_label(run.budgets[tag]), "best": best, "searched": searched,
                           "paper": paper})
    return {"model": model_info(run), "href": page_href, "dense": dense, "budgets": per_budget, "rows": rows}
