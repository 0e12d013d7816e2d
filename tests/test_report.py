"""The HTML reports (reports/): rendered from small result files written here, in the formats the
workflow's steps write (utrc-policy/1, utrc-results/1, utrc-profile/1, calibration and trial tables).

The browser test opens the page in headless Chromium (Debian's `chromium`; .ci/run installs it) and
checks that the page's script ran without a console message, that every chart has a non-zero
rendered size and marks, and that the tables are there."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from reports import render
from reports.data import ReportError, paper_reference

MODEL = "state-spaces/mamba2-2.7b"  # a paper checkpoint: the page shows the paper's numbers too
N_LAYER = 64
TASKS = {"lambada_openai": "acc", "hellaswag": "acc_norm", "piqa": "acc", "arc_easy": "acc",
         "arc_challenge": "acc_norm", "winogrande": "acc"}
METHODS = {"utrc-searched": "utrc", "utrc-paper": "utrc", "evit": "evit", "tome": "tome"}
BUDGETS = {"0.1": 0.1, "0.3": 0.3}
PAPER_LAYERS = (12, 17, 22, 27, 32, 37, 42)


def _policy(method: str, tag: str) -> dict:
    budget = BUDGETS[tag]
    if method == "utrc-searched":
        layers = {str(l): {"keep": round(1 - budget * (0.6 + 0.1 * (i % 3)), 3)} for i, l in enumerate(range(10, 50, 4))}
    else:
        layers = {str(l): {"keep": round(1 - budget / 2, 3)} for l in PAPER_LAYERS}
    return {
        "format": "utrc-policy/1", "method": METHODS[method],
        "model": {"name": MODEL, "architecture": "mamba2", "n_layer": N_LAYER, "d_model": 2560},
        "layers": layers, "prune_share": 0.5, "importance": "clip", "importance_source": "ssm_output",
        "hidden_strategy": "hybrid", "residual_strategy": "merge",
        "estimates": {"reduction": budget + 0.0004, "token_fraction_proxy": budget, "seq_len": 2048, "protect_last": 1},
        "measured": {"dev_kl": 0.05 * budget * (0.7 if method == "utrc-searched" else 1.0)} if method.startswith("utrc") else None,
        "provenance": {"study": f"x-flops{tag}", "versions": {"optuna": "5.0.0"}},
    }


def _results(method: str, tag: str | None, average: float) -> dict:
    nominal = 0.0 if tag is None else BUDGETS[tag]
    tasks = {}
    for i, (task, metric) in enumerate(TASKS.items()):
        score = average + 0.02 * (i - 2.5)
        realized = nominal * (0.6 + 0.05 * i)
        tasks[task] = {
            "metrics": {metric: score, "acc": score}, "paper_metric": metric, "score": score,
            "paper_extra": {"perplexity": 4.1 / (1 - nominal)} if task == "lambada_openai" else {},
            "n_items": 50, "n_requests": 100, "realized_flops_reduction": realized,
            "realized_token_fraction": realized, "dense_fallback": False,
            "realized": {"requests": 100, "dense_flops": 1e12, "reduced_flops": 1e12 * (1 - realized)},
        }
    tokens = [2048] * N_LAYER
    if tag is not None:
        for l in range(12, N_LAYER):
            tokens[l] = int(2048 * (1 - nominal * min(1.0, (l - 11) / 30)))
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


def write_run(root: Path, model: str = MODEL, name: str = "state-spaces--mamba2-2.7b") -> Path:
    """A complete run of one model (2 budgets) under root/results/NAME; returns the manifest path."""
    base = Path("results") / name
    files = {"calibration": {"summary": str(base / "calibration/summary.json"),
                             "table": str(base / "calibration/table.csv")},
             "policies": {m: {} for m in METHODS}, "search": {}, "evaluations": {"dense": str(base / "eval/dense.json")},
             "profiles": {}}
    docs = {files["evaluations"]["dense"]: _results("dense", None, 0.64)}
    for tag in BUDGETS:
        for m in METHODS:
            path = str(base / f"policies/{name}_{m}_flops{tag}.json")
            files["policies"][m][tag] = path
            docs[path] = _policy(m, tag)
            epath = str(base / f"eval/{m}_flops{tag}.json")
            files["evaluations"].setdefault(m, {})[tag] = epath
            docs[epath] = _results(m, tag, {"utrc-searched": 0.62, "utrc-paper": 0.6, "evit": 0.5, "tome": 0.45}[m]
                                   - BUDGETS[tag] / 10)
        ppath = str(base / f"profile/flops{tag}.json")
        files["profiles"][tag] = ppath
        docs[ppath] = {"format": "utrc-profile/1", "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16",
                       "mamba_ssm_kernels": True, "versions": {"torch": "2.13.0"},
                       "protocol": {"seq_len": 2048, "memory_batch": 96, "prefill_batch": 16, "generate_batch": 16,
                                    "new_tokens": 100, "repeats": 5, "measure": ["memory", "prefill", "generate"]},
                       "results": {"dense": {"prefill_s": 0.64},
                                   **{files["policies"][m][tag]: {
                                       "prefill_speedup": 1 + BUDGETS[tag] * 1.1, "ideal_speedup": 1 / (1 - BUDGETS[tag]),
                                       "generate_speedup": 1.05, "peak_memory_reduction_all_logits": BUDGETS[tag] * 1.4}
                                      for m in METHODS}}}
        tables = {"trials": str(base / f"search/flops{tag}/trials.csv"), "pareto": str(base / f"search/flops{tag}/pareto.csv")}
        files["search"][tag] = tables
        trials = [{"number": i, "state": "COMPLETE" if i != 5 else "FAIL",
                   "origin": ["paper", "calibration", "uniform"][i] if i < 3 else "sampled",
                   "quality_loss": 0.05 * BUDGETS[tag] * (1 + 1 / (i + 1)) if i != 5 else "",
                   "nominal_reduction": BUDGETS[tag] + 0.0001 * i, "importance": "clip", "importance_source": "ssm_output"}
                  for i in range(12)]
        _write_csv(root / tables["trials"], trials)
        _write_csv(root / tables["pareto"], trials[-1:])
    for path, doc in docs.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(doc))
    rows = []
    for layer in range(N_LAYER):
        for keep in (0.9, 0.7):
            rows.append(dict(layer=layer, kind="sensitivity", source="ssm_output", metric="clip", keep=keep, stat="kl",
                             value=0.0 if layer == N_LAYER - 1 else 0.01 * (1 - keep) * (1 + (layer % 7))))
        for metric in ("clip", "l2"):
            rows.append(dict(layer=layer, kind="importance", source="ssm_output", metric=metric, keep="", stat="rel_iqr",
                             value=0.3 if metric == "clip" else 1e-5))
            rows.append(dict(layer=layer, kind="match", source="ssm_output", metric=metric, keep="", stat="q50",
                             value=0.5 + 0.004 * layer))
    _write_csv(root / files["calibration"]["table"], rows)
    (root / files["calibration"]["summary"]).write_text(json.dumps({
        "format": "utrc-calibration/1", "hash": "ab" * 32, "data": {"n_sequences": 64, "seq_len": 1024, "text": "hf:wikitext"},
        "importance_signal": {"clip/ssm_output": {"informative": True}, "l2/ssm_output": {"informative": False}},
        "versions": {"python": "3.11.7"}}))
    manifest = {"format": "utrc-report-manifest/1", "model": {"ref": model, "name": name}, "budgets": BUDGETS,
                "files": files, "settings": {"models": [model], "budgets": [0.1, 0.3]},
                "workflow": {"snakemake": "9.27.1"}}
    path = root / base / "report-manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def page(tmp_path) -> Path:
    manifest = write_run(tmp_path)
    return render.render_page(manifest, tmp_path / "reports-out" / "state-spaces--mamba2-2.7b.html", root=tmp_path)


def _rows(html: str, table_class: str) -> list[str]:
    body = re.search(rf'<table class="{table_class}">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)


def test_summary_table_has_the_papers_shape(page):
    html = page.read_text()
    rows = re.findall(r'<tr class="[^"]*" data-method="([^"]+)" data-budget="([^"]*)"', html)
    expected = [("dense", "")] + [(m, t) for t in ("0.1", "0.3") for m in ("tome", "evit", "utrc-paper", "utrc-searched")]
    assert rows == expected
    # the best average of each budget is marked, and it is the searched policy here
    assert re.findall(r'<tr class="best" data-method="([^"]+)" data-budget="([\d.]+)"', html) == [
        ("utrc-searched", "0.1"), ("utrc-searched", "0.3")]
    head = re.search(r'<table class="summary">.*?</thead>', html, re.S).group(0)
    labels = [re.sub(r"<br>", " ", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", head)]
    assert labels[3:11] == ["LAMBADA ppl ↓", "LAMBADA", "HellaSwag", "PIQA", "ARC-e", "ARC-c", "WinoGrande", "Average"]
    searched_30 = re.search(r'data-method="utrc-searched" data-budget="0.3">(.*?)</tr>', html, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", searched_30, re.S)
    assert cells[1:3] == ["30.0", "21.8"]  # nominal (results file) and realized (sum over the tasks' requests)
    assert cells[10] == "59.0"  # average 0.62 - 0.03
    assert "1.33" in cells  # prefill speed-up 1 + 0.3 * 1.1


def test_every_chart_and_section_is_there(page):
    html = page.read_text()
    charts = re.findall(r'<figure class="chart( chart-empty)?" data-chart="([^"]+)"', html)
    names = [n for _, n in charts]
    assert not [n for empty, n in charts if empty], "a chart of the complete test run came out empty"
    for name in ("accuracy-nominal", "accuracy-realized", "keep-0.1", "keep-0.3", "tokens-0.1", "tokens-0.3",
                 "search-front", "search-history", "calibration-sensitivity", "calibration-signal", "calibration-match",
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
    evit = re.search(r'data-method="evit" data-budget="0.3">(.*?)</tr>', html, re.S).group(1)
    assert re.findall(r'<td class="avg">(.*?)</td>', evit) == ["–"]


def test_bad_manifest_is_refused(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ReportError, match="format: expected 'utrc-report-manifest/1'"):
        render.render_page(bad, tmp_path / "x.html")
    proc = subprocess.run([sys.executable, "-m", "reports.render", "page", "--manifest", str(tmp_path / "none.json"),
                           "--out", str(tmp_path / "x.html")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "manifest not found" in proc.stderr


def test_index_lists_the_models(tmp_path):
    a = write_run(tmp_path)
    b = write_run(tmp_path, model="demo:mamba2", name="demo-mamba2")
    out = render.render_index([a, b], tmp_path / "reports-out/index.html", root=tmp_path)
    html = out.read_text()
    assert 'href="state-spaces--mamba2-2.7b.html"' in html and 'href="demo-mamba2.html"' in html
    assert len(_rows(html, "models")) == 2
    assert 'data-chart="index-accuracy"' in html


# --- in a browser --------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


def open_in_chromium(path: Path) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the console messages) of a local page."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               "--window-size=1300,900", "--dump-dom", path.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium is not installed (.ci/run installs Debian's chromium)")


@needs_chromium
def test_page_draws_in_chromium(page):
    dom, console = open_in_chromium(page)
    assert console == [], f"the page wrote to the console: {console}"
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body and "data-errors" not in body
    figures = re.findall(r'<figure class="chart" data-chart="([^"]+)"', dom)
    drawn = re.findall(r'<svg class="chart-svg"[^>]*data-rendered="(\d+)x(\d+)" data-marks="(\d+)"', dom)
    assert len(figures) == len(drawn) >= 15
    assert all(int(w) > 100 and int(h) > 50 and int(m) > 0 for w, h, m in drawn), drawn
    assert f'data-charts-drawn="{len(figures)}"' in body
    assert int(re.search(r'data-tables="(\d+)"', body).group(1)) == 5  # summary, policies, realized, paper x2


@needs_chromium
def test_the_browser_check_catches_a_script_error(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefined_function();</script></body></html>")
    _, console = open_in_chromium(broken)
    assert any("undefined_function is not defined" in line for line in console)


def test_reports_need_no_torch(tmp_path):
    manifest = write_run(tmp_path)
    code = ("import sys; from reports import render; "
            f"render.render_page({str(manifest)!r}, {str(tmp_path / 'p.html')!r}, root={str(tmp_path)!r}); "
            "assert 'torch' not in sys.modules, 'reports imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
