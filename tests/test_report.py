"""The HTML reports (reports/): rendered from small result files written here, in the formats the
workflow's steps write (utrc-policy/1, utrc-results/1, utrc-profile/1, calibration and trial tables).

The browser tests open the page in headless Chromium (Debian's `chromium`; .ci/run installs it) at
1280 px and check that the page's script ran without a console message, that every chart has a
non-zero rendered size and marks, that the tables are there and that nothing is cut off. Without
chromium they skip, unless UTRC_REQUIRE_BROWSER=1 (set by .ci/run), where they fail."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from markupsafe import escape

from reports import page as report_page
from reports import render, svg
from reports.data import ReportError, load_run, paper_reference, read_manifest

MODEL = "state-spaces/mamba2-2.7b"  # a paper checkpoint: the page shows the paper's numbers too
N_LAYER = 64
TASKS = {"lambada_openai": "acc", "hellaswag": "acc_norm", "piqa": "acc", "arc_easy": "acc",
         "arc_challenge": "acc_norm", "winogrande": "acc"}
METHODS = {"utrc-searched": "utrc", "utrc-paper": "utrc", "evit": "evit", "tome": "tome"}
BUDGETS = {"0.1": 0.1, "0.3": 0.3}
PAPER_LAYERS = (12, 17, 22, 27, 32, 37, 42)


def _policy(method: str, tag: str, d_model: int = 2560) -> dict:
    budget = BUDGETS[tag]
    if method == "utrc-searched":
        layers = {str(layer): {"keep": round(1 - budget * (0.6 + 0.1 * (i % 3)), 3)}
                  for i, layer in enumerate(range(10, 50, 4))}
    else:
        layers = {str(layer): {"keep": round(1 - budget / 2, 3)} for layer in PAPER_LAYERS}
    return {
        "format": "utrc-policy/1", "method": METHODS[method],
        "model": {"name": MODEL, "architecture": "mamba2", "n_layer": N_LAYER, "d_model": d_model},
        "layers": layers, "prune_share": 0.5, "importance": "clip", "importance_source": "ssm_output",
        "hidden_strategy": "hybrid", "residual_strategy": "merge",
        "estimates": {"reduction": budget + 0.0004, "token_fraction_proxy": budget, "seq_len": 2048, "protect_last": 1},
        "measured": ({"dev_kl": 0.05 * budget * (0.7 if method == "utrc-searched" else 1.0)}
                     if method.startswith("utrc") else None),
        "provenance": {"study": f"x-flops{tag}", "versions": {"optuna": "5.0.0"}},
    }


def _results(method: str, tag: str | None, average: float, realized_scale: float = 1.0) -> dict:
    """Realized reduction of task i: nominal x (0.6 + 0.05 i) x realized_scale (so 0.725 x nominal over all six)."""
    nominal = 0.0 if tag is None else BUDGETS[tag]
    tasks = {}
    for i, (task, metric) in enumerate(TASKS.items()):
        score = average + 0.02 * (i - 2.5)
        realized = nominal * (0.6 + 0.05 * i) * realized_scale
        tasks[task] = {
            "metrics": {metric: score, "acc": score, f"{metric}_stderr": 0.01}, "paper_metric": metric, "score": score,
            "paper_extra": {"perplexity": 4.1 / (1 - nominal)} if task == "lambada_openai" else {},
            "n_items": 50, "n_requests": 100, "realized_flops_reduction": realized,
            "realized_token_fraction": realized, "dense_fallback": False,
            "realized": {"requests": 100, "dense_flops": 1e12, "reduced_flops": 1e12 * (1 - realized)},
        }
    tokens = [2048] * N_LAYER
    if tag is not None:
        for layer in range(12, N_LAYER):
            tokens[layer] = int(2048 * (1 - nominal * min(1.0, (layer - 11) / 30)))
    return {
        "format": "utrc-results/1", "model": MODEL, "method": "dense" if tag is None else METHODS[method],
        "policy": {}, "policy_file": None, "tasks": tasks, "average": average, "average_over": list(TASKS),
        "nominal": {"reduction": nominal, "seq_len": 2048, "protect_last": 1, "tokens_per_layer": tokens},
        "versions": {"utrc": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "lm_eval": "0.4.13"},
        "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "max_length": 2048,
        "seed": 1234, "batch_size": 16, "limit": None, "date": "2026-11-25T12:00:00+00:00", "elapsed_s": 10.0,
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


AVERAGES = {"utrc-searched": 0.62, "utrc-paper": 0.6, "evit": 0.5, "tome": 0.45}  # minus budget / 10


def write_run(root: Path, model: str = MODEL, name: str = "state-spaces--mamba2-2.7b", *, averages: dict | None = None,
              realized_scale: dict | None = None, profile_device: str = "NVIDIA H100 80GB HBM3",
              profile_baseline: str | None = None, d_model: int = 2560, storage: str | None = None) -> Path:
    """A complete run of one model (2 budgets) under root/results/NAME; returns the manifest path.
    `averages`: method -> average accuracy before the budget's penalty; `realized_scale`: method ->
    factor on its realized reductions; `profile_baseline`: the profile's `baseline` (None: a file of
    the older format, without it, and without a transformers-dense row)."""
    averages = {**AVERAGES, **(averages or {})}
    base = Path("results") / name
    files = {"calibration": {"summary": str(base / "calibration/summary.json"),
                             "table": str(base / "calibration/table.csv")},
             "policies": {m: {} for m in METHODS}, "search": {},
             "evaluations": {"dense": str(base / "eval/dense.json")},
             "profiles": {}}
    docs = {files["evaluations"]["dense"]: _results("dense", None, 0.64)}
    for tag, budget in BUDGETS.items():
        for m in METHODS:
            path = str(base / f"policies/{name}_{m}_flops{tag}.json")
            files["policies"][m][tag] = path
            docs[path] = _policy(m, tag, d_model)
            epath = str(base / f"eval/{m}_flops{tag}.json")
            files["evaluations"].setdefault(m, {})[tag] = epath
            docs[epath] = _results(m, tag, averages[m] - budget / 10, (realized_scale or {}).get(m, 1.0))
        ppath = str(base / f"profile/flops{tag}.json")
        files["profiles"][tag] = ppath
        extra = {"baseline": profile_baseline} if profile_baseline else {}
        reference = {"transformers-dense": {"prefill_s": 1.6, "generate_s": 9.0}} if profile_baseline else {}
        docs[ppath] = {"format": "utrc-profile/1", "device": profile_device, "dtype": "bfloat16", **extra,
                       "mamba_ssm_kernels": True, "versions": {"torch": "2.13.0"},
                       "protocol": {"seq_len": 2048, "memory_batch": 96, "prefill_batch": 16, "generate_batch": 16,
                                    "new_tokens": 100, "repeats": 5, "measure": ["memory", "prefill", "generate"]},
                       "results": {"dense": {"prefill_s": 0.64, "generate_s": 3.0}, **reference,
                                   **{files["policies"][m][tag]: {
                                       "prefill_speedup": 1 + budget * 1.1, "ideal_speedup": 1 / (1 - budget),
                                       "generate_speedup": 1.05, "peak_memory_reduction_all_logits": budget * 1.4}
                                      for m in METHODS}}}
        tables = {"trials": str(base / f"search/flops{tag}/trials.csv"),
                  "pareto": str(base / f"search/flops{tag}/pareto.csv")}
        files["search"][tag] = tables
        trials = [{"number": i, "state": "COMPLETE" if i != 5 else "FAIL",
                   "origin": ["utrc-paper", "calibration", "uniform"][i] if i < 3 else "sampled",
                   "quality_loss": 0.05 * budget * (1 + 1 / (i + 1)) if i != 5 else "",
                   "nominal_reduction": budget + 0.0001 * ((5 * i) % 12), "importance": "clip",
                   "importance_source": "ssm_output"}
                  for i in range(12)]
        _write_csv(root / tables["trials"], trials)
        # search.export's front of these trials (loss down, reduction up), found by hand: the loss falls with
        # the trial number, so a trial is on the front when no later trial reaches as far: 11 (+0.0007),
        # 9 (+0.0009) and 7 (+0.0011, the furthest of all COMPLETE trials).
        _write_csv(root / tables["pareto"], [trials[i] for i in (11, 9, 7)])
    for path, doc in docs.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(doc))
    rows = []
    for layer in range(N_LAYER):
        for keep in (0.9, 0.7):
            rows.append({"layer": layer, "kind": "sensitivity", "source": "ssm_output", "metric": "clip", "keep": keep,
                         "stat": "kl",
                             "value": 0.0 if layer == N_LAYER - 1 else 0.01 * (1 - keep) * (1 + (layer % 7))})
        for metric in ("clip", "l2"):
            rows.append({"layer": layer, "kind": "importance", "source": "ssm_output", "metric": metric, "keep": "",
                         "stat": "rel_iqr",
                             "value": 0.3 if metric == "clip" else 1e-5})
            rows.append({"layer": layer, "kind": "match", "source": "ssm_output", "metric": metric, "keep": "",
                         "stat": "q50",
                             "value": 0.5 + 0.004 * layer})
    _write_csv(root / files["calibration"]["table"], rows)
    (root / files["calibration"]["summary"]).write_text(json.dumps({
        "format": "utrc-calibration/1", "hash": "ab" * 32,
        "data": {"n_sequences": 64, "seq_len": 1024, "text": "hf:wikitext"},
        "importance_signal": {"clip/ssm_output": {"informative": True}, "l2/ssm_output": {"informative": False}},
        "versions": {"python": "3.11.7"}}))
    studies = {tag: {"storage": storage or f"{base}/search/flops{tag}/study.journal", "name": f"{name}-flops{tag}"}
               for tag in BUDGETS}
    manifest = {"format": "utrc-report-manifest/1", "model": {"ref": model, "name": name}, "budgets": BUDGETS,
                "files": files, "studies": studies,
                "settings": {"models": [model], "budgets": [0.1, 0.3], "device": "cuda",
                             "search": {"storage": storage}},
                "workflow": {"snakemake": "9.27.1"}}
    path = root / base / "report-manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def page(tmp_path) -> Path:
    manifest = write_run(tmp_path)
    return render.render_page(manifest, tmp_path / "reports-out" / "state-spaces--mamba2-2.7b.html", root=tmp_path)


def _rows(html: str, table_class: str) -> list[str]:
    body = re.search(rf'<table class="{table_class}">.*?<tbody>(.*?)</tbody>', html, re.DOTALL).group(1)
    return re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL)


def test_summary_table_has_the_papers_shape(page):
    html = page.read_text()
    rows = re.findall(r'<tr class="[^"]*" data-method="([^"]+)" data-budget="([^"]*)"', html)
    expected = [("dense", "")] + [(m, t) for t in ("0.1", "0.3")
                                  for m in ("tome", "evit", "utrc-paper", "utrc-searched")]
    assert rows == expected
    # the best average of each budget is marked, and it is the searched policy here
    assert re.findall(r'<tr class="best[^"]*" data-method="([^"]+)" data-budget="([\d.]+)"', html) == [
        ("utrc-searched", "0.1"), ("utrc-searched", "0.3")]
    head = re.search(r'<table class="summary">.*?</thead>', html, re.DOTALL).group(0)
    labels = [re.sub(r"<br>", " ", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", head)]
    assert labels[3:11] == ["LAMBADA ppl ↓", "LAMBADA", "HellaSwag", "PIQA", "ARC-e", "ARC-c", "WinoGrande", "Average"]
    searched_30 = re.search(r'data-method="utrc-searched" data-budget="0.3">(.*?)</tr>', html, re.DOTALL).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", searched_30, re.DOTALL)
    assert cells[1:3] == ["30.0", "21.8"]  # nominal (results file) and realized (sum over the tasks' requests)
    assert cells[10] == "59.0"  # average 0.62 - 0.03
    assert "1.33" in cells  # prefill speed-up 1 + 0.3 * 1.1


def test_every_chart_and_section_is_there(page):
    html = page.read_text()
    charts = re.findall(r'<figure class="chart( chart-empty)?" data-chart="([^"]+)"', html)
    names = [n for _, n in charts]
    assert not [n for empty, n in charts if empty], "a chart of the complete test run came out empty"
    for name in ("accuracy-nominal", "accuracy-realized", "keep-0.1", "keep-0.3", "tokens-0.1", "tokens-0.3",
                 "search-front", "search-history-0.1", "search-history-0.3", "calibration-sensitivity",
                 "calibration-signal", "calibration-match",
                 "profile-prefill-speedup", "profile-generate-speedup", "profile-memory-reduction", "paper-accuracy"):
        assert name in names
    assert "l2/ssm_output  (uninformative)" in html
    assert 'id="paper"' in html and "as published" in html
    # the paper's own rows for this checkpoint, labelled as the paper's
    assert len(_rows(html, "paper")) == len(paper_reference(MODEL)["results"]) == 10


def test_page_is_self_contained_and_links_the_policy_files(page, tmp_path):
    html = page.read_text()
    assert not re.search(r'<(script|img|link|iframe)[^>]+(src|href)=', html), "the page must not load anything"
    assert not re.search(r'(src|href)="(https?:)?//', html)
    links = set(re.findall(r'href="([^"#]+\.json)"', html))
    assert len(links) == 8  # 4 methods x 2 budgets
    for href in links:
        assert (page.parent / href).resolve().is_file(), href


def test_missing_files_leave_a_partial_page(tmp_path):
    manifest = write_run(tmp_path)
    (tmp_path / "results/state-spaces--mamba2-2.7b/eval/evit_flops0.3.json").unlink()
    (tmp_path / "results/state-spaces--mamba2-2.7b/profile/flops0.1.json").unlink()
    out = render.render_page(manifest, tmp_path / "out/p.html", root=tmp_path)
    html = out.read_text()
    assert "incomplete" in html and "evit_flops0.3.json" in html
    evit = re.search(r'data-method="evit" data-budget="0.3">(.*?)</tr>', html, re.DOTALL).group(1)
    assert re.findall(r'<td class="avg">(.*?)</td>', evit) == ["–"]


def test_bad_manifest_is_refused(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ReportError, match="format: expected 'utrc-report-manifest/1'"):
        render.render_page(bad, tmp_path / "x.html")
    proc = subprocess.run([sys.executable, "-m", "reports.render", "page", "--manifest", str(tmp_path / "none.json"),
                           "--out", str(tmp_path / "x.html")], check=False, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "manifest not found" in proc.stderr


def test_index_lists_the_models(tmp_path):
    a = write_run(tmp_path)
    b = write_run(tmp_path, model="demo:mamba2", name="demo-mamba2")
    out = render.render_index([a, b], tmp_path / "reports-out/index.html", root=tmp_path)
    html = out.read_text()
    assert 'href="state-spaces--mamba2-2.7b.html"' in html and 'href="demo-mamba2.html"' in html
    rows = _rows(html, "models")
    assert len(rows) == 2
    assert rows[0].count("UTRC, searched 59.0") == 1  # the 30 % budget's recommendation (average 0.62 - 0.03)
    assert 'data-chart="index-accuracy"' in html


# --- the recommendation ------------------------------------------------------------------------


def _box(html: str, tag: str) -> str:
    return re.search(rf'<div class="recommend" data-budget="{re.escape(tag)}">(.*?)</pre>', html, re.DOTALL).group(1)


def test_recommendation_follows_the_stated_rule(tmp_path):
    # EViT has the best average at both budgets but realizes only half its nominal reduction; the others
    # realize 2 x 0.725 = 1.45 x nominal, so they meet the budget and the best of them is the searched policy
    manifest = write_run(tmp_path, averages={"evit": 0.7}, realized_scale={"evit": 0.5, "utrc-searched": 2.0,
                                                                            "utrc-paper": 2.0, "tome": 2.0})
    html = render.render_page(manifest, tmp_path / "out/p.html", root=tmp_path).read_text()
    assert "Per budget, among the policies evaluated on this page whose realized FLOPs reduction" in html  # the rule
    box = _box(html, "0.3")
    assert re.search(r"<h3>30 % FLOPs budget: <svg.*?</svg>UTRC, searched</h3>", box)
    assert "3 of 4 evaluated policies" in box and "realizes 43.5 %" in box  # 1.45 x 30 %
    assert "Left out, realized reduction below the budget: EViT (67.0 %, realized 10.9 %)" in box
    assert "Next: UTRC, paper schedule, 57.0 % (2.0 points lower)" in box
    path = "results/state-spaces--mamba2-2.7b/policies/state-spaces--mamba2-2.7b_utrc-searched_flops0.3.json"
    assert f'<a href="../{path}"><code>{path}</code></a>' in box
    code = re.search(r'<pre class="apply">(.*)', box, re.DOTALL).group(1).replace("&#39;", "'")
    assert code.splitlines() == [
        "import utrc",
        "model, tokenizer = utrc.load_model('state-spaces/mamba2-2.7b', device='cuda')",
        f"policy = utrc.Policy.load('{path}')",
        "reduced = utrc.apply(model, policy)   # reduced(input_ids, protect_last=1).logits"]
    assert "caution" not in box
    # the table marks the same row
    marked = re.findall(r'data-method="([^"]+)" data-budget="0.3">\s*<td class="method">[^\n]*title="recommended', html)
    assert marked == ["utrc-searched"]


def _scored(method, average, realized, budget_tag="0.3"):
    return {"method": method, "label": report_page.LABELS[method], "tag": budget_tag, "average": average,
            "realized": realized, "nominal": 0.3, "policy_path": f"{method}.json", "n_items": [100], "limit": None,
            "average_stderr": None, "color": report_page.COLORS[method]}


def _recommend(rows):
    run = SimpleNamespace(budgets={"0.3": 0.3})  # all `recommendations` reads of a run
    return report_page.recommendations(run, {"rows": rows, "profile": None}, "demo:mamba2", "cpu")[0]


def test_recommendation_ties_and_nothing_meeting_the_budget():
    # equal averages: the larger realized reduction wins, then the stated order of methods
    box = _recommend([_scored("tome", 0.6, 0.31), _scored("utrc-searched", 0.6, 0.30), _scored("evit", 0.5, 0.40)])
    assert box["row"]["method"] == "tome"
    box = _recommend([_scored("tome", 0.6, 0.31), _scored("utrc-paper", 0.6, 0.31)])
    assert box["row"]["method"] == "utrc-paper"
    # nobody realizes 30 %: the best average of all, with a caution naming the best realized reduction
    box = _recommend([_scored("tome", 0.55, 0.29), _scored("evit", 0.6, 0.25)])
    assert box["row"]["method"] == "evit"
    assert box["warnings"] == [("No policy's realized reduction reached 30 % on these items (highest: ToMe (PuMer), "
                               "29.0 %): this is the best average of all 2 evaluated policies of the budget, by "
                               "nominal reduction.")]
    assert _recommend([])["row"] is None


# --- true captions, visible series --------------------------------------------------------------------


def test_realized_caption_follows_the_data(tmp_path):
    larger = write_run(tmp_path / "a", realized_scale=dict.fromkeys(METHODS, 2.0))  # realized 1.45 x nominal
    html = render.render_page(larger, tmp_path / "a/p.html", root=tmp_path / "a").read_text()
    caption = re.search(r'data-chart="accuracy-realized">.*?<figcaption>(.*?)</figcaption>', html, re.DOTALL).group(1)
    assert "Realized reduction against nominal: larger for 8 of the 8 evaluated policies." in caption
    assert "smaller" not in caption and "falls short" not in caption
    smaller = write_run(tmp_path / "b")  # 0.725 x nominal
    html = render.render_page(smaller, tmp_path / "b/p.html", root=tmp_path / "b").read_text()
    caption = re.search(r'data-chart="accuracy-realized">.*?<figcaption>(.*?)</figcaption>', html, re.DOTALL).group(1)
    assert "smaller for 8 of the 8" in caption and "larger" not in caption


def _marker_centres(body: str) -> list[tuple[float, float, float]]:
    """(x, y, size) of each marker drawn in an SVG fragment."""
    circles = re.findall(r'<circle cx="([\d.-]+)" cy="([\d.-]+)" r="([\d.]+)"', body)
    out = [(float(x), float(y), float(r)) for x, y, r in circles]
    out += [(float(x) + float(w) / 2, float(y) + float(w) / 2, float(w) / 2)
            for x, y, w in re.findall(r'<rect x="([\d.-]+)" y="([\d.-]+)" width="([\d.]+)" height="[\d.]+" '
                                      r'fill="[^"]+" stroke="#ffffff"', body)]
    for pts in re.findall(r'<polygon points="([^"]+)"', body):
        xy = [tuple(map(float, p.split(","))) for p in pts.split()]
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        out.append((round(sum(xs) / len(xs), 1), round(sum(ys) / len(ys), 1), round(max(xs) - min(xs), 1)))
    return out


def hidden_series(chart: str) -> list[str]:
    """Series of one chart drawn on exactly the coordinates of another with nothing to tell them apart:
    the same line without interleaved dashes, or a marker of the same size at the same place."""
    found = []
    groups = re.findall(r'<g data-series="([^"]+)" class="series"([^>]*)>(.*?)</g>', chart, re.DOTALL)
    lines: dict[str, list] = {}
    for name, attrs, body in groups:
        for points, rest in re.findall(r'<polyline points="([^"]+)"([^>]*)>', body):
            lines.setdefault(points, []).append((name, attrs, rest))
    for members in lines.values():
        if len(members) < 2:
            continue
        offsets = [re.search(r'stroke-dasharray="[^"]+" stroke-dashoffset="([^"]+)"', rest) for _, _, rest in members]
        if (not all("data-coincides" in attrs for _, attrs, _ in members) or None in offsets
                or len({o.group(1) for o in offsets}) < len(members)):
            found.append("same line: " + ", ".join(name for name, _, _ in members))
    seen: dict[tuple, str] = {}
    for name, _, body in groups:
        for x, y, size in _marker_centres(body):
            key = (round(x), round(y), round(size, 1))
            if key in seen and seen[key] != name:
                found.append(f"same marker: {seen[key]}, {name} at {key}")
            seen.setdefault(key, name)
    return found


def _charts(html: str) -> dict[str, str]:
    return dict(re.findall(r'<figure class="chart" data-chart="([^"]+)">(.*?)</figure>', html, re.DOTALL))


def test_no_series_hides_another(page, monkeypatch):
    charts = _charts(page.read_text())
    # the test run's four methods process the same tokens per layer: one line of interleaved dashes
    tokens = charts["tokens-0.3"]
    assert len(re.findall(r'class="series" data-coincides=', tokens)) == 4
    assert "ToMe (PuMer) (same values as UTRC, searched)" in tokens
    for name, chart in charts.items():
        assert hidden_series(chart) == [], name
    # keep ratios: one row per policy, so the paper's schedule and ToMe (equal keeps here) both show
    keep = charts["keep-0.3"]
    rows = re.findall(r'text-anchor="start" font-size="12" class="tick">([^<]+)</text>', keep)
    assert rows[:-1] == ["UTRC, searched", "UTRC, paper schedule", "EViT", "ToMe (PuMer)"]  # then the scale's "0.50"
    assert len(re.findall(r'class="cell', keep)) == 4 * N_LAYER
    # the check itself finds series drawn over each other, as the page drew them before
    same = [svg.Series("a", [(0, 1), (1, 2)], marker="circle"), svg.Series("b", [(0, 1), (1, 2)], marker="circle")]
    assert hidden_series(svg.xy_chart("x", same, title="t", x_label="x", y_label="y")) == []
    monkeypatch.setattr(svg, "_coinciding", lambda series, drawn: {})
    assert hidden_series(svg.xy_chart("x", same, title="t", x_label="x", y_label="y"))[0] == "same line: a, b"


def test_search_front_is_search_exports_pareto_table(tmp_path):
    manifest = write_run(tmp_path)
    run = load_run(read_manifest(manifest), tmp_path)
    assert [r["number"] for r in run.pareto["0.3"]] == [11, 9, 7]
    # a different table on disk is what the page draws: the front is read, never recomputed
    trials = run.trials["0.3"]
    _write_csv(tmp_path / read_manifest(manifest)["files"]["search"]["0.3"]["pareto"], [trials[0], trials[4]])
    html = render.render_page(manifest, tmp_path / "out/p.html", root=tmp_path).read_text()
    front = re.findall(r'<g data-series="Pareto front \(pareto.csv\)" class="series"><polyline points="([^"]+)"',
                       _charts(html)["search-front"])
    assert [len(points.split()) for points in front] == [5, 3]  # a staircase through 3 and through 2 trials


# --- the efficiency section -----------------------------------------------------------------------------


def test_cpu_profile_is_labelled_and_kept_out_of_decisions(tmp_path):
    manifest = write_run(tmp_path, profile_device="CPU (x86_64, 1 threads) — wall time and RSS growth, not GPU figures",
                         d_model=64)
    html = render.render_page(manifest, tmp_path / "out/p.html", root=tmp_path).read_text()
    head = re.search(r'<table class="summary">.*?</thead>', html, re.DOTALL).group(0)
    assert "prefill" not in head and "× dense" not in head
    assert "1.33" not in re.search(r'<table class="summary">.*?</table>', html, re.DOTALL).group(0)
    assert "Measured on" not in _box(html, "0.3")
    section = re.search(r'<section id="efficiency">(.*?)</section>', html, re.DOTALL).group(1)
    assert "CPU wall-clock of a tiny model: not a speed result" in section
    assert "Prefill speed-up over dense (CPU wall-clock of a tiny model)" in section
    assert 'data-chart="profile-prefill-speedup"' in section  # shown, labelled


def test_profile_ratios_name_their_baseline(tmp_path):
    baseline = "mamba_ssm MambaLMHeadModel, dense, causal_conv1d fused paths"
    manifest = write_run(tmp_path, profile_baseline=baseline)
    html = render.render_page(manifest, tmp_path / "out/p.html", root=tmp_path).read_text()
    head = re.search(r'<table class="summary">.*?</thead>', html, re.DOTALL).group(0)
    assert f'title="prefill speed-up against {baseline}"' in head
    assert f"Speed-up and memory columns: ratios against {baseline}, measured on NVIDIA H100 80GB HBM3" in html
    measured = f"Measured on NVIDIA H100 80GB HBM3 against {baseline} (not part of the rule): prefill 1.33×"
    assert measured in _box(html, "0.3")
    section = re.search(r'<section id="efficiency">(.*?)</section>', html, re.DOTALL).group(1)
    assert f"Every ratio is against\n    <b>{baseline}</b>" in section
    assert section.count(f"<figcaption>Ratios against {baseline};") == 3
    # transformers' dense model is a reference row of its own, in no decision
    reference = _rows(html, "profile-reference")
    assert len(reference) == 2 and "<code>transformers-dense</code>" in reference[0] and "0.64 / 1.6" in reference[0]
    assert "transformers-dense" not in re.search(r'<table class="summary">.*?</table>', html, re.DOTALL).group(0)
    # a file of the older format (no "baseline") says what its dense row was
    old = render.render_page(write_run(tmp_path / "old"), tmp_path / "old/p.html", root=tmp_path / "old").read_text()
    assert f"Every ratio is against\n    <b>{escape(report_page.LEGACY_BASELINE)}</b>" in old


# --- optuna-dashboard, tables ----------------------------------------------------------------------------


def test_dashboard_section_names_each_study(page, tmp_path):
    html = page.read_text()
    section = re.search(r'<section id="dashboard">(.*?)</section>', html, re.DOTALL).group(1)
    for tag, budget in BUDGETS.items():
        assert (f"optuna-dashboard results/state-spaces--mamba2-2.7b/search/flops{tag}/study.journal   # "
                f"{report_page.budget_label(budget)}: study state-spaces--mamba2-2.7b-flops{tag}") in section
    assert "JournalStorage(JournalFileBackend(path))" in section
    url = "postgresql://utrc:s3cret@db.example:5432/utrc"
    manifest = write_run(tmp_path / "db", storage=url)
    html = render.render_page(manifest, tmp_path / "db/p.html", root=tmp_path / "db").read_text()
    assert "optuna-dashboard postgresql://utrc:***@db.example:5432/utrc" in html
    assert "s3cret" not in html  # neither in the command nor in the run's settings


def test_tables_are_read_into_python_values(tmp_path):
    manifest = write_run(tmp_path)
    run = load_run(read_manifest(manifest), tmp_path)
    failed = run.trials["0.1"][5]
    assert failed["state"] == "FAIL" and failed["quality_loss"] is None
    assert type(failed["number"]) is int and type(run.trials["0.1"][0]["quality_loss"]) is float
    broken = tmp_path / read_manifest(manifest)["files"]["search"]["0.1"]["trials"]
    broken.write_text("number,state\n1,COMPLETE\n2,COMPLETE,extra,fields\n")
    with pytest.raises(ReportError, match=r"trials.csv is not a readable table"):
        load_run(read_manifest(manifest), tmp_path)


# --- in a browser --------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
WIDTH = 1280  # the narrowest desktop window the page must fit without cutting anything off


@pytest.fixture
def chromium() -> str:
    """Debian's chromium; skipped where it is missing, unless UTRC_REQUIRE_BROWSER=1 (.ci/run): then a failure."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("UTRC_REQUIRE_BROWSER") == "1":
            pytest.fail("UTRC_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    return path


def open_in_chromium(chromium: str, path: Path, width: int = WIDTH) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the console messages) of a local page in a `width`-px window."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--window-size={width},900", "--dump-dom", path.resolve().as_uri()],
                              check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_page_draws_in_chromium(page, chromium):
    dom, console = open_in_chromium(chromium, page)
    assert console == [], f"the page wrote to the console: {console}"
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body and "data-errors" not in body
    figures = re.findall(r'<figure class="chart" data-chart="([^"]+)"', dom)
    drawn = re.findall(r'<svg class="chart-svg"[^>]*data-rendered="(\d+)x(\d+)" data-marks="(\d+)"', dom)
    assert len(figures) == len(drawn) >= 16
    assert all(int(w) > 100 and int(h) > 50 and int(m) > 0 for w, h, m in drawn), drawn
    assert f'data-charts-drawn="{len(figures)}"' in body
    assert int(re.search(r'data-tables="(\d+)"', body).group(1)) == 5  # summary, policies, realized, paper x2
    assert 'data-cut-off=""' in body, re.search(r'data-cut-off="([^"]*)"', body).group(1)


def test_nothing_is_cut_off_with_every_column(tmp_path, chromium):
    # the widest summary table: GPU speed and memory columns, a reference row, a database storage
    manifest = write_run(tmp_path, profile_baseline="mamba_ssm MambaLMHeadModel, dense, causal_conv1d fused paths",
                         storage="postgresql://utrc:s3cret@db.example:5432/utrc")
    out = render.render_page(manifest, tmp_path / "reports-out/p.html", root=tmp_path)
    body = re.search(r"<body([^>]*)>", open_in_chromium(chromium, out)[0]).group(1)
    assert 'data-cut-off=""' in body, re.search(r'data-cut-off="([^"]*)"', body).group(1)


def test_the_browser_checks_catch_errors_and_cut_off_content(tmp_path, chromium):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefined_function();</script></body></html>")
    _, console = open_in_chromium(chromium, broken)
    assert any("undefined_function is not defined" in line for line in console)
    wide = tmp_path / "wide.html"  # the page's own script on a table wider than the window
    script = (Path(render.TEMPLATES) / "page.js").read_text()
    wide.write_text(f'<html><body><div class="table-wrap" style="overflow-x:auto"><table><tr><td style="min-width:'
                    f'{2 * WIDTH}px">x</td></tr></table></div><script>{script}</script></body></html>')
    body = re.search(r"<body([^>]*)>", open_in_chromium(chromium, wide)[0]).group(1)
    assert re.search(r'data-cut-off="div.table-wrap \d+px in \d+px"', body), body


def test_reports_need_no_torch(tmp_path):
    manifest = write_run(tmp_path)
    code = ("import sys; from reports import render; "
            f"render.render_page({str(manifest)!r}, {str(tmp_path / 'p.html')!r}, root={str(tmp_path)!r}); "
            "assert 'torch' not in sys.modules, 'reports imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_comparison_section_shows_the_verdict_at_realized_cost(tmp_path):
    manifest_path = write_run(tmp_path)
    manifest = json.loads(manifest_path.read_text())
    compare = {"format": "utrc-compare/1", "model": MODEL, "budget": 0.3,
               "searched": {"seeds": [{"average": 0.70}, {"average": 0.66}],
                            "average": {"mean": 0.68, "sd": 0.0283, "min": 0.66, "max": 0.70, "n": 2},
                            "realized_flops_reduction": {"mean": 0.366, "sd": 0.0, "min": 0.366, "max": 0.366, "n": 2}},
               "against": {"utrc-paper": {"average": 0.581, "realized_flops_reduction": 0.404,
                                          "difference": {"mean": 0.099, "ci95": [0.062, 0.138]},
                                          "verdict": "not comparable: the searched policy removes 3.8 points less"},
                           "evit": {"average": 0.53, "realized_flops_reduction": 0.294,
                                    "difference": {"mean": 0.15, "ci95": [0.11, 0.19]}, "verdict": "better"}}}
    path = tmp_path / "results" / "cmp" / "flops0.3.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(compare))
    manifest["files"]["compare"] = {"0.3": str(path)}
    manifest_path.write_text(json.dumps(manifest))
    html = render.render_page(manifest_path, tmp_path / "out.html", root=tmp_path).read_text()
    section = html[html.index('<section id="comparison">'):]
    section = section[: section.index("</section>")]
    assert "mean over 2 search seeds (spread of their averages: 2.8 points)" in section
    rows = _rows(section, "compare")
    paper = next(r for r in rows if "paper schedule" in r)
    # difference and interval in points, both realized reductions, and the verdict as utrc.compare gave it
    assert "+9.9" in paper and "[+6.2, +13.8]" in paper and "36.6 %" in paper and "40.4 %" in paper
    assert "not comparable" in paper
    assert "better" in next(r for r in rows if "EViT" in r)
    bad = dict(compare, format="something-else")
    path.write_text(json.dumps(bad))
    with pytest.raises(ReportError, match="utrc-compare/1"):
        render.render_page(manifest_path, tmp_path / "out.html", root=tmp_path)
