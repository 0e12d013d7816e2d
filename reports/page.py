"""What one model's page shows, computed from a `data.Run`: the summary table, the charts, the tables.

`model_page(run, out_dir)` returns the template's context (plain dicts, lists and SVG markup).
`index_entry(run, page_href)` returns the index's row for the model. No file is read here.
"""

from __future__ import annotations

import json
import math
import os
import re
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
# One look per method on every chart and table of the page: colour (Paul Tol's "vibrant"), marker and
# dash, so methods stay apart in grey too. Colours mean methods and nothing else on a model's page;
# budgets are told apart by position (groups, panels, clusters) and written labels.
COLORS = {"dense": "#555555", "tome": "#EE7733", "evit": "#009988", "utrc-paper": "#0077BB", "utrc-searched": "#CC3311"}
MARKERS = {"dense": "circle", "tome": "diamond", "evit": "square", "utrc-paper": "triangle", "utrc-searched": "star"}
DASHES = {"dense": "6 4", "tome": "7 3", "evit": "2 3", "utrc-paper": "10 3 2 3", "utrc-searched": ""}
NEUTRAL = "#222222"  # what belongs to no method: the Pareto fronts
# Tie-break of the recommendation (after average accuracy and realized reduction), and the order of
# the per-budget charts and policy lists.
PREFERENCE = ("utrc-searched", "utrc-paper", "evit", "tome")

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
    base = task.removeprefix(DEMO_PREFIX)
    base = "lambada_openai" if base == "lambada" else base
    return (TASK_ORDER.index(base) if base in TASK_ORDER else len(TASK_ORDER), task)


def task_label(task: str) -> str:
    base = task.removeprefix(DEMO_PREFIX)
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


# --- the profile: what its ratios are against -------------------------------------------------------

# Profile files without a `baseline` key measured dense through utrc's own layer loop (docs/method.md §6).
LEGACY_BASELINE = "dense through utrc's own layer loop (nothing reduced)"
REFERENCE_ROWS = ("transformers-dense",)  # shown for reference, never a decision row
TINY_D_MODEL = 256  # at or below this width a model's CPU timings are labelled "tiny model"


def profile_info(run: Run) -> dict | None:
    """What the budgets' profile files measured, where, and what their ratios are against.

    Ratios in a file are against its `dense` row, which its `baseline` names. Timings taken on a CPU
    (`device` starting with "CPU") are wall-clock times of whatever model ran there: they are shown,
    labelled, and never used for a decision (`decision` False)."""
    docs = [run.profiles[t] for t in run.budgets if t in run.profiles]
    if not docs:
        return None
    doc = docs[0]
    device = str(doc.get("device") or "")
    cpu = device.upper().startswith("CPU")
    baselines = list(dict.fromkeys(d.get("baseline") or LEGACY_BASELINE for d in docs))
    return {"device": device, "cpu": cpu, "decision": not cpu, "baseline": "; ".join(baselines),
            "dtype": doc.get("dtype"), "kernels": doc.get("mamba_ssm_kernels"), "protocol": doc.get("protocol", {})}


def _profile_row(run: Run, method: str, tag: str) -> dict | None:
    """The profile's row of (method, budget): keyed by the policy path given to utrc.profile (or its
    file name, or the method's name)."""
    doc = run.profiles.get(tag)
    entry = run.policies.get(method, {}).get(tag)
    if not doc or not entry:
        return None
    path = entry[0]
    for key, row in doc.get("results", {}).items():
        if key in (path, method) or Path(key).name == Path(path).name:
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
    """Rows in the paper's shape: dense, then per budget tome / evit / paper schedule / searched.
    Speed and memory columns only from a GPU profile: CPU timings stay in the efficiency section."""
    tasks = tasks_of(run)
    profile = profile_info(run)
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
    decision = profile is not None and profile["decision"]
    optional = {"ppl": any(task_key(t)[0] == 0 for t in tasks),  # LAMBADA's perplexity
                "profiled": decision and any(r.get("prefill_speedup") is not None for r in rows),
                "generation": decision and any(r.get("generate_speedup") is not None for r in rows),
                "memory": decision and any(r.get("memory_reduction") is not None for r in rows)}
    return {"tasks": [{"name": t, "label": task_label(t)} for t in tasks], "rows": rows, **optional,
            "columns": 6 + len(tasks) + sum(optional.values()),  # method, 2 x FLOPs, average, KL, file; tasks
            "demo": bool(tasks) and all(t.startswith(DEMO_PREFIX) for t in tasks), "profile": profile}


def _row(run: Run, method: str, tag: str, budget: float | None, doc: dict | None, tasks, out_dir) -> dict:
    policy = run.policies.get(method, {}).get(tag)
    row = {"method": method, "label": LABELS[method], "color": COLORS[method], "tag": tag, "budget": budget,
           "budget_label": budget_label(budget) if budget is not None else "",
           "evaluated": doc is not None, "scores": {}, "average": None, "average_stderr": None, "ppl": None,
           "nominal": None, "realized": None, "dev_kl": None, "best": False, "policy_href": None, "policy_name": None,
           "policy_path": None, "n_items": [], "limit": None}
    if policy:
        path, pdoc = policy
        row["policy_href"] = _href(run, path, out_dir)
        row["policy_name"] = Path(path).name
        row["policy_path"] = path
        row["dev_kl"] = (pdoc.get("measured") or {}).get("dev_kl")
        row["nominal"] = (pdoc.get("estimates") or {}).get("reduction")
    if doc:
        stderrs = []
        for t in tasks:
            task = doc["tasks"].get(t, {})
            row["scores"][t] = task.get("score")
            if "perplexity" in (task.get("paper_extra") or {}):
                row["ppl"] = task["paper_extra"]["perplexity"]
            if task:
                row["n_items"].append(task.get("n_items"))
                stderrs.append((task.get("metrics") or {}).get(f"{task.get('paper_metric')}_stderr"))
        row["average"] = doc.get("average")
        if stderrs and all(isinstance(e, (int, float)) for e in stderrs):  # independent tasks: SE of their mean
            row["average_stderr"] = math.sqrt(sum(e * e for e in stderrs)) / len(stderrs)
        row["nominal"] = doc.get("nominal", {}).get("reduction", row["nominal"])
        row["realized"] = realized_reduction(doc)
        row["realized_by_task"] = {t: doc["tasks"][t].get("realized_flops_reduction")
                                   for t in tasks if t in doc["tasks"]}
        row["limit"] = doc.get("limit")
    if method == "dense":
        row["nominal"] = row["realized"] = 0.0
    prof = _profile_row(run, method, tag) if method != "dense" else None
    if prof:
        row["prefill_speedup"] = prof.get("prefill_speedup")
        row["ideal_speedup"] = prof.get("ideal_speedup")
        row["generate_speedup"] = prof.get("generate_speedup")
        row["memory_reduction"] = prof.get("peak_memory_reduction_all_logits")
        row["memory_reduction_last"] = prof.get("peak_memory_reduction_last_logits")
    return row


# --- the recommendation ----------------------------------------------------------------------------

RULE = ("Per budget, among the policies evaluated on this page whose realized FLOPs reduction on the evaluated "
        "items meets the budget: the best average accuracy. Ties go to the larger realized reduction, then to the "
        "first in the order " + "; ".join(LABELS[m] for m in PREFERENCE) + ". If no policy meets the budget on "
        "these items, the best average among all of the budget's evaluated policies (each was made for the budget's "
        "nominal reduction), and the box says so. Speed and memory are not part of the rule.")


def _rank(row: dict) -> tuple:
    realized = row["realized"] if row["realized"] is not None else -math.inf
    return (-row["average"], -realized, PREFERENCE.index(row["method"]))


def recommendations(run: Run, table: dict, ref: str, device: str) -> list[dict]:
    """One box per budget: the policy to deploy by `RULE`, why, its file and the lines that apply it."""
    profile = table["profile"]
    boxes = []
    for tag, budget in run.budgets.items():
        box = {"tag": tag, "budget_label": budget_label(budget), "row": None, "why": [], "warnings": []}
        boxes.append(box)
        scored = [r for r in table["rows"] if r["tag"] == tag and r["method"] != "dense"
                  and r["average"] is not None and r["policy_path"]]
        if not scored:
            box["why"].append("No policy of this budget has been evaluated: nothing to recommend yet.")
            continue
        meets = sorted((r for r in scored if r["realized"] is not None and r["realized"] >= budget), key=_rank)
        pool = meets or sorted(scored, key=_rank)
        best = box["row"] = pool[0]
        if meets:
            box["why"].append(f"Best average accuracy ({pct(best['average'])} %) of the {len(meets)} of "
                              f"{len(scored)} evaluated policies whose realized FLOPs reduction meets "
                              f"{budget_label(budget)}; this one realizes {pct(best['realized'])} % "
                              f"(nominal {pct(best['nominal'])} %).")
        else:
            top = max(scored, key=lambda r: r["realized"] if r["realized"] is not None else -math.inf)
            box["warnings"].append(f"No policy's realized reduction reached {budget_label(budget)} on these items "
                                   f"(highest: {top['label']}, {pct(top['realized'])} %): this is the best average of "
                                   f"all {len(scored)} evaluated policies of the budget, by nominal reduction.")
            box["why"].append(f"Best average accuracy ({pct(best['average'])} %); realized reduction "
                              f"{pct(best['realized'])} %, nominal {pct(best['nominal'])} %.")
        if len(pool) > 1:
            nxt = pool[1]
            box["why"].append(f"Next: {nxt['label']}, {pct(nxt['average'])} % "
                              f"({100 * (best['average'] - nxt['average']):.1f} points lower).")
        left_out = [r for r in scored if meets and r not in meets]
        if left_out:
            box["why"].append("Left out, realized reduction below the budget: " + "; ".join(
                f"{r['label']} ({pct(r['average'])} %, realized {pct(r['realized'])} %)"
                for r in sorted(left_out, key=_rank)))
        if best["average_stderr"] is not None:
            items = [n for n in best["n_items"] if n]
            box["why"].append(f"Standard error of that average: {100 * best['average_stderr']:.1f} points (lm-eval's "
                              f"per-task errors, tasks independent; {min(items)}–{max(items)} items per task)."
                              if items else "")
        if best["limit"]:
            box["warnings"].append(f"lm-eval ran with limit {best['limit']} items per task: a test run, not a basis "
                                   "for deployment.")
        if profile and profile["decision"] and best.get("prefill_speedup") is not None:
            box["why"].append(f"Measured on {profile['device']} against {profile['baseline']} (not part of the rule): "
                              + ", ".join(f"{what} {fmt(best[key])}" for key, what, fmt in (
                                  ("prefill_speedup", "prefill", lambda v: f"{v:.2f}×"),
                                  ("generate_speedup", "generation", lambda v: f"{v:.2f}×"),
                                  ("memory_reduction", "peak memory", lambda v: f"−{pct(v)} %"))
                                  if best.get(key) is not None) + ".")
        box["why"] = [w for w in box["why"] if w]
        box["code"] = apply_snippet(ref, best["policy_path"], device)
    return boxes


def apply_snippet(ref: str, policy_path: str, device: str) -> str:
    """The lines that load the model, load the policy file and apply it (README's "Apply a policy")."""
    where = "" if device == "cpu" else f", device={device!r}"
    return (f"import utrc\n"
            f"model, tokenizer = utrc.load_model({ref!r}{where})\n"
            f"policy = utrc.Policy.load({policy_path!r})\n"
            f"reduced = utrc.apply(model, policy)   # reduced(input_ids, protect_last=1).logits")


# --- charts ------------------------------------------------------------------------------------------

EQUAL_REDUCTION = 0.0005  # realized and nominal closer than this count as equal (0.05 points)


def realized_vs_nominal(rows: list[dict]) -> str | None:
    """What the evaluated policies' realized reductions did against their nominal ones, counted from the
    rows, with the mechanism behind each direction seen (docs/method.md §5); None without such rows."""
    pairs = [(r["realized"], r["nominal"]) for r in rows
             if r["method"] != "dense" and r["realized"] is not None and r["nominal"] is not None]
    if not pairs:
        return None
    larger = sum(re > no + EQUAL_REDUCTION for re, no in pairs)
    smaller = sum(re < no - EQUAL_REDUCTION for re, no in pairs)
    equal = len(pairs) - larger - smaller
    counts = [f"{what} for {n}" for n, what in ((larger, "larger"), (smaller, "smaller"), (equal, "equal")) if n]
    text = f"Realized reduction against nominal: {', '.join(counts)} of the {len(pairs)} evaluated policies."
    if larger:
        text += (" It exceeds nominal on requests shorter than the 2048 tokens nominal is costed at: the matching "
                 "step's cost grows with the square of the prefix, so it takes less of the saving.")
    if smaller:
        text += " It falls short where long scored answers, which are never reduced, make up much of a request."
    return text


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
                LABELS[m], [(r[key], r["average"]) for r in pts], color=COLORS[m], marker=MARKERS[m], dash=DASHES[m],
                size=6 if m == "utrc-searched" else 5, width=2.5 if m == "utrc-searched" else 1.8,
                tips=[f"{LABELS[m]}, {r['budget_label']} budget: average {pct(r['average'])} %, nominal reduction "
                      f"{pct(r['nominal'])} %, realized {pct(r['realized'])} %" for r in pts]))
        hl = ([svg.HLine(dense["average"], f"dense {pct(dense['average'])} %", COLORS["dense"], DASHES["dense"])]
              if dense else [])
        caption = ("Up and to the right is better. Each point is one evaluated policy file, one per budget along each "
                   "line (budgets labelled at the top); the dashed grey line is the dense model.")
        if key == "realized":
            caption = ("Up and to the right is better. Each point is one evaluated policy file, one per budget "
                       "along each line; the dashed grey line is the dense model. "
                       + (realized_vs_nominal(rows) or "")).strip()
        nominal = key == "nominal"  # points sit at the budgets: an axis from 0, the budgets labelled at the top
        top = max([r[key] for s in series for r in rows if r[key] is not None] + list(run.budgets.values()))
        charts.append(svg.xy_chart(
            f"accuracy-{key}", series, title=f"Average accuracy against {what.split(' (')[0]}",
            x_label=what, y_label="average accuracy", x_format=svg.percent(), y_format=svg.percent(), hlines=hl,
            x_domain=(0.0, math.ceil(top * 1.1 * 20) / 20) if nominal else None,
            notes=[svg.Note(b, budget_label(b)) for b in run.budgets.values()] if nominal else (), caption=caption))
    return charts


def keep_charts(run: Run) -> list[dict]:
    """Per budget: each method's keep ratio per layer (one row per method, so no policy can hide another),
    and the tokens each layer processes."""
    panels = []
    for tag, budget in run.budgets.items():
        methods = [m for m in PREFERENCE if run.policies.get(m, {}).get(tag)]
        grid, tips, token_series, n_layer = [], [], [], None
        for m in methods:
            pdoc = run.policies[m][tag][1]
            n_layer = pdoc["model"]["n_layer"]
            keeps = [pdoc["layers"].get(str(layer), {}).get("keep") for layer in range(n_layer)]
            grid.append(keeps)
            tips.append([f"{LABELS[m]}, layer {layer}: " + ("not reduced" if k is None else f"keep {k:.3f}")
                         for layer, k in enumerate(keeps)])
            doc = _eval(run, m, tag)
            tokens = (doc or {}).get("nominal", {}).get("tokens_per_layer")
            if tokens:
                seq = doc["nominal"].get("seq_len", tokens[0])
                # each layer's count spans [layer - 0.5, layer + 0.5], centred on its tick
                steps = [(layer - 0.5, t / seq) for layer, t in enumerate(tokens)]
                steps.append((len(tokens) - 0.5, tokens[-1] / seq))
                token_series.append(svg.Series(
                    LABELS[m], steps, color=COLORS[m], marker="none", dash=DASHES[m],
                    width=2.5 if m == "utrc-searched" else 1.8, step=True))
        if not methods:
            continue
        label = budget_label(budget)
        panel = {"tag": tag, "budget": budget, "label": label, "charts": [svg.heatmap(
            f"keep-{tag}", [LABELS[m] for m in methods], [str(layer) for layer in range(n_layer)], grid,
            title=f"Keep ratio per layer, {label} budget", x_label="layer (block index)", domain=(0.5, 1.0),
            scale="grey", row_marks=[(COLORS[m], MARKERS[m]) for m in methods], value_format=lambda v: f"{v:.2f}",
            tips=tips, width=560,
            caption="One row per policy file. Blank: the layer removes nothing; darker: it keeps fewer tokens (0.5, "
                    "the darkest, removes the most a layer can: half its prefix). The value is written where it fits; "
                    "hover a cell for it.")]}
        if token_series:
            panel["charts"].append(svg.xy_chart(
                f"tokens-{tag}", token_series, title=f"Tokens each layer processes, {label} budget",
                x_label="layer (block index)", y_label="share of the 2048 input tokens", y_domain=(0.0, 1.02),
                x_domain=(-0.5, n_layer - 0.5), integer_x=True, x_format=lambda v: f"{v:.0f}", y_format=svg.percent(),
                caption="After every reduction the following layers see fewer tokens; the area under a line is "
                        "roughly the work done. Methods with identical counts share one line of alternating dashes "
                        "in their colours (the legend says which).", width=560, height=300))
        panels.append(panel)
    return panels


def search_charts(run: Run) -> list:
    """All budgets' trials against their nominal reduction (budgets apart by position), with each study's
    Pareto front as search.export wrote it (pareto.csv); then one search history per budget."""
    if not run.trials:
        return []
    front, history = [], []
    searched, paper_color = COLORS["utrc-searched"], COLORS["utrc-paper"]
    for tag, rows in sorted(run.trials.items(), key=lambda kv: run.budgets.get(kv[0], 0)):
        name = budget_label(run.budgets[tag]) if tag in run.budgets else tag
        done = [r for r in rows if r.get("state") == "COMPLETE" and r.get("quality_loss") is not None]
        if not done:
            continue
        best = min(done, key=lambda r: (r["quality_loss"], r["number"]))  # search.export's best_trial
        paper = [r for r in done if r.get("origin") == "utrc-paper"]
        sampled = [r for r in done if r.get("origin") != "utrc-paper" and r is not best]  # the best is its star

        def tip(r, name=name):
            return (f"{name} study, trial {r['number']} ({r.get('origin')}): dev KL {r['quality_loss']:.4g}, nominal "
                    f"reduction {pct(r.get('nominal_reduction'), 2)} %, "
                    f"{r.get('importance')}/{r.get('importance_source')}")

        def xy(rs, x):
            return [(r[x], r["quality_loss"]) for r in rs]

        pareto = sorted((r for r in run.pareto.get(tag, []) if r.get("quality_loss") is not None),
                        key=lambda r: r["nominal_reduction"])
        front += [
            svg.Series("trials", xy(sampled, "nominal_reduction"), color=searched, line=False, size=3, opacity=0.45,
                       tips=[tip(r) for r in sampled]),
            svg.Series("paper schedule's trial", xy(paper, "nominal_reduction"), color=paper_color, line=False,
                       marker=MARKERS["utrc-paper"], size=5, tips=[tip(r) for r in paper]),
            svg.Series("Pareto front (pareto.csv)", xy(pareto, "nominal_reduction"), color=NEUTRAL, marker="none",
                       step=True, width=1.5),
            svg.Series("exported best (UTRC, searched)", xy([best], "nominal_reduction"), color=searched, line=False,
                       marker="star", size=6, tips=[tip(best)]),
        ]
        running, best_so_far = [], math.inf
        for r in sorted(done, key=lambda r: r["number"]):
            best_so_far = min(best_so_far, r["quality_loss"])
            running.append((r["number"], best_so_far))
        history.append(svg.xy_chart(
            f"search-history-{tag}", [
                svg.Series("trials", xy(sampled, "number"), color=searched, line=False, size=3, opacity=0.45,
                           tips=[tip(r) for r in sampled]),
                svg.Series("paper schedule's trial", xy(paper, "number"), color=paper_color, line=False,
                           marker=MARKERS["utrc-paper"], size=5, tips=[tip(r) for r in paper]),
                svg.Series("best so far", running, color=searched, marker="none", step=True, width=2.2),
                svg.Series("exported best (UTRC, searched)", xy([best], "number"), color=searched, line=False,
                           marker="star", size=6, tips=[tip(best)])],
            title=f"Search history, {name} budget", x_label="trial number", y_label="dev KL from dense (log)",
            log_y=True, integer_x=True, x_format=lambda v: f"{v:.0f}",
            caption=f"{len(done)} completed trials. Each dot is a trial's quality loss, the line the best so far; "
                    f"the star, trial {best['number']}, is the exported policy. {_seeded(done)}",
            width=560, height=300))
    notes = [svg.Note(run.budgets[t], budget_label(run.budgets[t])) for t in run.trials if t in run.budgets]
    spread = max((max(r["nominal_reduction"] for r in rows) - min(r["nominal_reduction"] for r in rows)
                  for rows in run.trials.values() if rows), default=0.0)
    where = (f"each study's trials lie within {100 * spread:.2f} points of reduction, at its budget (labelled above it)"
             if spread < 0.01 else "budgets labelled above their values")
    return [svg.xy_chart(
        "search-front", front, title="Search: quality loss against nominal FLOPs reduction",
        x_label="nominal FLOPs reduction", y_label="dev KL from dense (log)", log_y=True, x_format=svg.percent(),
        notes=notes,
        caption=f"Every completed trial of every budget's study; {where}. Stars: the exported policy (lowest dev KL); "
                "triangles: the paper's schedule on the same budget; black staircase: the study's Pareto front as "
                "search.export wrote it (no trial of the study is both better and cheaper)."), *history]


def _seeded(trials: list[dict]) -> str:
    """Which trials were seeded rather than sampled, from the trials' own `origin` column."""
    seeded = [f"{r['number']} ({r['origin']})" for r in sorted(trials, key=lambda r: r["number"])
              if r.get("origin") not in (None, "sampled")]
    return f"Seeded trials: {', '.join(seeded)}; the rest sampled by the study." if seeded else ""


def _uninformative(signal: dict) -> str:
    marked = sorted(p for p, v in signal.items() if v.get("informative") is False)
    return f"{len(marked)} of {len(signal)}: {', '.join(marked)}" if marked else f"none of the {len(signal)}"


def calibration_charts(run: Run) -> list:
    rows = run.calibration_table
    if not rows:
        return []
    layers = sorted({int(r["layer"]) for r in rows})
    cols = [str(layer) for layer in layers]
    charts = []
    sens = [r for r in rows if r["kind"] == "sensitivity" and r["stat"] == "kl"]
    if sens:
        keys = sorted({(f"{r['metric']}/{r['source']}", r["keep"]) for r in sens}, key=lambda k: (k[0], -k[1]))
        grid = {(f"{r['metric']}/{r['source']}", r["keep"], int(r["layer"])): r["value"] for r in sens}
        charts.append(svg.heatmap(
            "calibration-sensitivity", [f"{p} keep {k:g}" for p, k in keys], cols,
            [[grid.get((p, k, layer)) for layer in layers] for p, k in keys],
            title="Sensitivity: KL from dense, one layer reduced",
            x_label="layer", log=True, value_format=lambda v: f"{v:.2g}",
            caption="UTRC at one layer alone, at each keep ratio. Dark = the model barely notices; bright = "
                    "reducing here hurts. The search's calibration prior removes more where it is dark."))
    signal = (run.calibration or {}).get("importance_signal", {})
    for kind, stat, name, title, log, caption in (
        ("importance", "rel_iqr", "calibration-signal", "Importance signal: spread of token scores", True,
         ("Relative interquartile range of the per-token importance scores. Near zero, a metric ranks tokens by "
          f"noise: such pairs are marked (uninformative) and left out of the search; here {_uninformative(signal)}.")),
        ("match", "q50", "calibration-match", "Median best-match similarity g(a)", False,
         "Cosine similarity of each less-important token to its best match: high values make merging cheap."),
    ):
        sel = [r for r in rows if r["kind"] == kind and r["stat"] == stat]
        if not sel:
            continue
        pairs = sorted({f"{r['metric']}/{r['source']}" for r in sel})
        grid = {(f"{r['metric']}/{r['source']}", int(r["layer"])): r["value"] for r in sel}
        labels = [p + ("  (uninformative)" if signal.get(p, {}).get("informative") is False else "") for p in pairs]
        values = [[grid.get((p, layer)) for layer in layers] for p in pairs]
        charts.append(svg.heatmap(name, labels, cols, values, title=title,
                                  x_label="layer", log=log, value_format=lambda v: f"{v:.2g}", caption=caption))
    return charts


def comparison_section(run: Run) -> list[dict]:
    """Per budget, utrc-searched against every other run at the cost each really had (utrc.compare):
    the paired difference with its interval, both realized reductions and the verdict the numbers allow."""
    out = []
    for tag, doc in run.comparisons.items():
        searched = doc["searched"]
        seeds = searched["average"]["n"]
        rows = []
        for other in PREFERENCE[1:] + ("dense",):
            entry = doc["against"].get(other)
            if entry is None:
                continue
            diff = entry["difference"]
            rows.append({"method": other, "label": LABELS[other], "color": COLORS[other],
                         "difference": f"{100 * diff['mean']:+.1f}",
                         "ci": f"[{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]",
                         "searched_realized": pct(searched["realized_flops_reduction"]["mean"]),
                         "other_realized": pct(entry["realized_flops_reduction"]),
                         "verdict": entry["verdict"]})
        out.append({"tag": tag, "label": budget_label(doc["budget"]), "rows": rows, "seeds": seeds,
                    "spread": None if seeds < 2 else f"{100 * searched['average']['sd']:.1f}"})
    return out


def profile_section(run: Run, table: dict, model: dict) -> dict | None:
    """The efficiency section: bar charts per budget, labelled with the baseline the ratios are against;
    on a CPU labelled as wall-clock noise and kept out of every decision."""
    info = table["profile"]
    if info is None:
        return None
    tags = [t for t in run.budgets if t in run.profiles]
    methods = [m for m in METHODS[1:] if any(_profile_row(run, m, t) for t in tags)]
    if not methods:
        return None
    tiny = isinstance(model.get("d_model"), int) and model["d_model"] <= TINY_D_MODEL
    what = ("CPU wall-clock of a tiny model" if tiny else "CPU wall-clock") if info["cpu"] else info["device"]
    rows = {(r["method"], r["tag"]): r for r in table["rows"]}
    groups = [budget_label(run.budgets[t]) for t in tags]
    charts = []
    for key, title, ideal in (("prefill_speedup", "Prefill speed-up over dense", True),
                              ("generate_speedup", "Generation speed-up over dense", False),
                              ("memory_reduction", "Peak memory reduction against dense (all logits)", False),
                              ("memory_reduction_last", "Peak memory reduction against dense (last logits)", False)):
        bars = [svg.Bar(LABELS[m], [rows.get((m, t), {}).get(key) for t in tags], color=COLORS[m],
                        marks=[rows.get((m, t), {}).get("ideal_speedup") for t in tags] if ideal else None)
                for m in methods]
        if not any(v is not None for b in bars for v in b.values):
            continue
        pct_axis = key.startswith("memory")
        charts.append(svg.bar_chart(
            f"profile-{key.replace('_', '-')}", groups, bars, title=f"{title} ({what})", x_label="FLOPs budget",
            y_label="reduction" if pct_axis else "speed-up (×)",
            y_format=svg.percent() if pct_axis else (lambda v: f"{v:.2f}"), baseline=None if pct_axis else 1.0,
            baseline_label="dense = 1", mark_label="ideal (dense / reduced FLOPs)",
            caption=f"Ratios against {info['baseline']}; dense and the policies ran in one process on the same inputs."
                    + (" Black ticks: the ideal speed-up the FLOPs model predicts." if ideal else "")))
    reference = []
    for t in tags:
        results = run.profiles[t].get("results", {})
        dense = results.get("dense") or {}
        for name in REFERENCE_ROWS:
            ref_row = results.get(name)
            if not ref_row:
                continue
            measured = {key: (dense.get(key), ref_row.get(key))
                        for key in ("prefill_s", "generate_s", "peak_memory_gib_all_logits")}
            reference.append({"budget_label": budget_label(run.budgets[t]), "name": name, **measured})
    return {**info, "charts": charts, "what": what, "tiny": tiny, "reference": reference}


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
                                 color=COLORS[m], marker=MARKERS[m], dash=DASHES[m],
                                 tips=[f"paper: {r['method']} at {pct(r['flops_reduction'], 0)} %: "
                                       f"average {r['average']} %" for r in pts]))
    chart = svg.xy_chart("paper-accuracy", series, title="The paper's reported averages (as published)",
                         x_label="FLOPs reduction", y_label="average accuracy", x_format=svg.percent(),
                         y_format=svg.percent(),
                         caption="Tables 1-2 of Zhan et al. (EMNLP 2024), produced with the authors' released "
                                 "evaluation code, which scores shifted positions: not comparable with the numbers "
                                 "above.")
    for r in rows:
        r["label"] = LABELS[r["method"]]
    return {"rows": rows, "efficiency": ref["efficiency"], "chart": chart,
            "tasks": [(t, TASK_LABELS[t]) for t in TASK_ORDER]}


# --- policies, settings, versions ---------------------------------------------------------------------


def policy_files(run: Run, out_dir: Path) -> list[dict]:
    out = []
    for tag in run.budgets:
        for m in PREFERENCE:
            entry = run.policies.get(m, {}).get(tag)
            if not entry:
                continue
            path, pdoc = entry
            layers = [f"{layer}: {v['keep']:g}"
                      for layer, v in sorted(pdoc["layers"].items(), key=lambda kv: int(kv[0]))]
            out.append({
                "method": m, "label": LABELS[m], "color": COLORS[m], "tag": tag, "name": Path(path).name, "path": path,
                "budget_label": budget_label(run.budgets[tag]),
                "href": _href(run, path, out_dir), "layers": layers,
                "importance": f"{pdoc['importance']}/{pdoc['importance_source']}", "prune_share": pdoc["prune_share"],
                "strategies": f"{pdoc['hidden_strategy']} / {pdoc['residual_strategy']}",
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


def dashboard(run: Run) -> dict | None:
    """Where each budget's Optuna study is, for optuna-dashboard (the manifest's `studies`); passwords
    in database URLs are masked."""
    studies = run.manifest.get("studies") or {}
    rows = [{"budget_label": budget_label(b), "name": studies[t].get("name"),
             "storage": mask_password(studies[t]["storage"]), "journal": "://" not in studies[t]["storage"]}
            for t, b in run.budgets.items() if studies.get(t, {}).get("storage")]
    return {"studies": rows} if rows else None


def mask_password(text: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (anywhere in `text`)."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def model_page(run: Run, out_dir: Path) -> dict:
    table = summary(run, out_dir)
    model = model_info(run)
    device = str((run.manifest.get("settings") or {}).get("device") or "cpu")
    return {
        "model": model,
        "budgets": run.budgets,
        "summary": table,
        "rule": RULE,
        "recommendations": recommendations(run, table, run.ref, device),
        "comparisons": comparison_section(run),
        "accuracy_charts": accuracy_charts(run, table),
        "realized_note": realized_vs_nominal(table["rows"]),
        "keep_panels": keep_charts(run),
        "search_charts": search_charts(run),
        "dashboard": dashboard(run),
        "calibration_charts": calibration_charts(run),
        "calibration": run.calibration,
        "profile": profile_section(run, table, model),
        "paper": paper_section(run),
        "policy_files": policy_files(run, out_dir),
        "settings": mask_password(json.dumps(run.manifest.get("settings", {}), indent=2)),
        "versions": versions(run),
        "missing": run.missing,
    }


def index_entry(run: Run, page_href: str) -> dict:
    table = summary(run, Path("."))
    rows = table["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    device = str((run.manifest.get("settings") or {}).get("device") or "cpu")
    recommended = {box["tag"]: box["row"] for box in recommendations(run, table, run.ref, device)}
    per_budget = []
    for tag in run.budgets:
        group = [r for r in rows if r["tag"] == tag and r["average"] is not None]
        searched = next((r for r in group if r["method"] == "utrc-searched"), None)
        paper = next((r for r in group if r["method"] == "utrc-paper"), None)
        per_budget.append({"tag": tag, "label": budget_label(run.budgets[tag]), "recommended": recommended.get(tag),
                           "searched": searched, "paper": paper})
    return {"model": model_info(run), "href": page_href, "dense": dense, "budgets": per_budget, "rows": rows}
