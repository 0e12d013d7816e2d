"""The Snakemake workflow: plans for both shipped configurations, configuration errors that name the
key, and one tiny real run end to end (a small random Mamba-2 model, one budget, one demo task),
followed by the checks that a second run does nothing and a changed budget reruns only its jobs.

Runs happen in a temporary directory (`snakemake -s Snakefile -d TMP`), never in the repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
TINY = ROOT / "tests" / "data" / "workflow-tiny.yaml"


def snakemake(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, timeout=timeout)


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run -> {rule: count}; {} when there is nothing to do."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_default_config_plans_the_demo_run(tmp_path):
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config.yaml")))
    assert jobs == {"calibrate": 1, "search_worker": 3, "export": 3, "evaluate_dense": 1, "evaluate": 12,
                    "compare": 3, "profile": 3, "report": 1, "report_index": 1, "all": 1}


def test_the_demo_search_configs_plan_their_runs(tmp_path):
    # config/ holds the other runs, each laid over config.yaml (and the devacc run over search-demo.yaml)
    configs = [str(ROOT / "config" / "search-demo.yaml")]
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--configfile", *configs))
    assert jobs == {"calibrate": 1, "search_worker": 3, "export": 3, "evaluate_dense": 1, "evaluate": 12,
                    "compare": 3, "report": 1, "report_index": 1, "all": 1}
    configs.append(str(ROOT / "config" / "search-demo-devacc.yaml"))
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--configfile", *configs, "--config", "search={\"seeds\": 3}"))
    assert jobs == {"calibrate": 1, "search_init": 3, "search_worker": 6, "export": 1, "evaluate_dense": 1,
                    "evaluate": 4, "evaluate_seed": 3, "compare": 1, "report": 1, "report_index": 1, "all": 1}


def test_paper_config_plans_the_full_paper_run(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "paper.yaml"))
    jobs = planned_jobs(proc)
    studies = 2 + 3 + 2 + 3  # the paper's budgets of the four checkpoints
    assert jobs == {"calibrate": 4, "search_init": studies, "search_worker": 4 * studies, "export": studies,
                    "evaluate_dense": 4, "evaluate": 4 * studies, "compare": studies, "profile": studies, "report": 4,
                    "report_index": 1, "all": 1}
    out = proc.stdout
    assert "results/state-spaces--mamba2-2.7b/policies/state-spaces--mamba2-2.7b_utrc-searched_flops0.3.json" in out
    assert "reports-out/state-spaces--mamba-1.4b.html" in out


BAD = {  # a bad key or value -> the line that names it (all reported at once, before any job)
    "bogus=1": "(top level): Additional properties are not allowed ('bogus' was unexpected)",
    "budgets=[0.3,1.5]": "budgets[1]: 1.5 is greater than or equal to the maximum of 1",
    'search={"n_trails": 5}': "search: Additional properties are not allowed ('n_trails' was unexpected)",
    'evaluation={"methods": ["dense", "pumer"]}': "evaluation.methods[1]: 'pumer' is not one of",
    "device=gpu": "device: 'gpu' does not match",
}


def test_a_bad_configuration_stops_naming_each_key(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config.yaml"), "--config", *BAD)
    out = proc.stdout + proc.stderr  # Snakemake prints errors to stdout when it has no terminal
    assert proc.returncode != 0 and "invalid configuration" in out
    for message in BAD.values():
        assert message in out, out[-3000:]
    assert "Building DAG" not in out  # stopped before planning anything


def test_two_models_may_not_share_a_directory(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config.yaml"), "--config",
                     'models=["demo:mamba2", {"ref": "/elsewhere/demo-mamba2"}]')
    assert proc.returncode != 0 and "directory name 'demo-mamba2' is already used" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 4-block Mamba-2 with the demo tokenizer, saved in Hugging Face format."""
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from demo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = Mamba2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, expand=2, head_dim=16,
                          num_heads=4, state_size=8, n_groups=1, chunk_size=16, pad_token_id=0, bos_token_id=2,
                          eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(config).eval()
    with torch.no_grad():  # non-unit norm weights, so that importance scores differ between tokens
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_tiny_run_end_to_end(tmp_path, tiny_model):
    models = json.dumps([{"ref": str(tiny_model), "name": "tiny"}])
    args = ["--configfile", str(TINY), "--config", f"models={models}"]
    proc = snakemake(tmp_path, "--cores", "2", *args)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    results = tmp_path / "results" / "tiny"
    policy = json.loads((results / "policies" / "tiny_utrc-searched_flops0.15.json").read_text())
    assert policy["format"] == "utrc-policy/1" and policy["estimates"]["reduction"] >= 0.15
    for name in ("tiny_utrc-paper_flops0.15.json", "tiny_evit_flops0.15.json", "tiny_tome_flops0.15.json"):
        assert (results / "policies" / name).is_file()
    doc = json.loads((results / "eval" / "utrc-searched_flops0.15.json").read_text())
    assert doc["format"] == "utrc-results/1" and list(doc["tasks"]) == ["demo_piqa"]
    assert len(doc["tasks"]["demo_piqa"]["item_scores"]["acc"]) == 4  # per-item scores, for the comparison
    compared = json.loads((results / "compare" / "flops0.15.json").read_text())
    assert compared["format"] == "utrc-compare/1" and list(compared["against"]) == ["dense"]
    assert (results / "search" / "flops0.15" / "seed0" / "trials.csv").is_file()
    page = (tmp_path / "reports-out" / "tiny.html").read_text()
    assert 'data-method="utrc-searched" data-budget="0.15"' in page and "tiny_utrc-searched_flops0.15.json" in page
    assert 'href="tiny.html"' in (tmp_path / "reports-out" / "index.html").read_text()
    # each job's output goes to its log
    assert "Running loglikelihood requests" in (results / "logs" / "eval-utrc-searched-flops0.15.log").read_text()

    # a second run has nothing to do
    assert planned_jobs(snakemake(tmp_path, "-n", *args)) == {}
    # another budget reruns its own jobs only: calibration and the dense evaluation are kept
    jobs = planned_jobs(snakemake(tmp_path, "-n", *args, "budgets=[0.1]"))
    assert jobs == {"search_worker": 1, "export": 1, "evaluate": 1, "compare": 1, "profile": 1, "report": 1,
                    "report_index": 1, "all": 1}
    # another evaluation method runs that evaluation only
    jobs = planned_jobs(snakemake(tmp_path, "-n", *args, 'evaluation={"methods": ["dense", "utrc-searched", "evit"]}'))
    assert jobs == {"evaluate": 1, "compare": 1, "report": 1, "report_index": 1, "all": 1}
