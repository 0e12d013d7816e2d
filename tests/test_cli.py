"""The `utrc` command: dispatch to the modules' mains, `inspect` / `apply`, lm-eval's command line with our
defaults (CPU without CUDA, the demo tasks by name), one-line errors, and one note instead of
transformers' kernel-fallback warnings on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from utrc import ModelSpec, Policy
from utrc.flops import estimate_flops
from utrc.loading import CPU_KERNEL_NOTE
from utrc.shapes import PAPER_SHAPES

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "docs/results/search-demo-mamba2/policies/demo-mamba2_utrc-searched_flops0.3.json"  # for demo:mamba2
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


def utrc_command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`utrc ARGS` as the console script declared in pyproject.toml runs it."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["utrc"]
    module, function = target.split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_flops_is_dispatched_with_its_arguments():
    proc = utrc_command("flops", "--model", "state-spaces/mamba2-2.7b")
    assert proc.returncode == 0, proc.stderr
    assert "state-spaces/mamba2-2.7b" in proc.stdout and "state-spaces/mamba-2.8b" not in proc.stdout


def test_unknown_command_names_the_commands():
    proc = utrc_command("evaluate")
    assert proc.returncode == 2 and "invalid choice: 'evaluate'" in proc.stderr and "inspect" in proc.stderr


def test_inspect_validates_shows_and_estimates_flops():
    proc = utrc_command("inspect", str(POLICY), "--model", "demo:mamba2", "--seq-len", "1024")
    assert proc.returncode == 0, proc.stderr
    policy = Policy.load(POLICY)
    assert f"after block   2: keep {policy.layers[2].keep:g}" in proc.stdout
    from utrc import load_model

    expected = estimate_flops(load_model("demo:mamba2")[0], policy, 1024, 1)
    assert f"reduction {expected['reduction']:.1%}" in proc.stdout
    assert f"tokens per block: {expected['tokens_per_layer']}" in proc.stdout


def test_inspect_estimates_a_paper_checkpoint_without_loading_it(tmp_path):
    name = "state-spaces/mamba2-2.7b"
    shape = PAPER_SHAPES[name]
    policy = Policy.paper(ModelSpec.of(shape, name), 0.9)
    proc = utrc_command("inspect", str(policy.save(tmp_path / "paper.json")))
    assert proc.returncode == 0, proc.stderr
    assert f"fits {name} (published shape)" in proc.stdout
    assert f"reduction {estimate_flops(shape, policy)['reduction']:.1%}" in proc.stdout


@pytest.mark.parametrize("case", ["not json", "bad keep", "other model"])
def test_bad_input_is_one_line_naming_it(case, tmp_path):
    path = tmp_path / "policy.json"
    doc = json.loads(POLICY.read_text())
    if case == "not json":
        path.write_text("{")
        args, expected = [str(path)], "not valid JSON"
    elif case == "bad keep":
        doc["layers"]["2"]["keep"] = 1.5
        path.write_text(json.dumps(doc))
        args, expected = [str(path)], "keep"
    else:
        path.write_text(json.dumps(doc))
        args = [str(path), "--model", "demo:mamba"]
        expected = "the policy was made for 'mamba2' but the model has 'mamba'"
    proc = utrc_command("inspect", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_apply_runs_the_policy_beside_dense():
    proc = utrc_command("apply", str(POLICY), "--model", "demo:mamba2", "--text",
                        "tom owns a dog . nobody knew why the bell rang . so in the end tom owns a")
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.split("tokens per block ")[-1].split("]")[0] + "]")
    assert counts[0] == counts[1] == counts[2] > counts[3] > counts[-1]  # the policy reduces after blocks 2..6
    assert "realized prefill FLOPs reduction on this text" in proc.stdout and "next token: dense" in proc.stdout


@no_cuda
def test_a_cuda_device_without_cuda_is_one_line():
    for args in (["eval", "--model_args", f"pretrained=demo:mamba2,policy={POLICY}", "--tasks", "demo_piqa",
                  "--device", "cuda"],
                 ["inspect", str(POLICY), "--model", "demo:mamba2", "--device", "cuda:0"]):
        proc = utrc_command(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert lines and "CUDA is not available here" in lines[0] and "use --device cpu" in lines[0]
        assert "Traceback" not in proc.stderr


def test_lm_eval_defaults_device_model_and_demo_tasks():
    from lm_eval._cli import HarnessCLI

    from utrc.demo import task_dir
    from utrc.lm_eval import _our_defaults

    def parsed(*argv):
        saved, sys.argv = sys.argv, ["lm-eval", *argv]
        try:
            args = HarnessCLI().parse_args()
        finally:
            sys.argv = saved
        _our_defaults(args)
        return args

    args = parsed("--model_args", "pretrained=demo:mamba2,policy=dense", "--tasks", "demo_piqa")
    assert args.model == "utrc" and args.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert args.include_path == str(task_dir("test"))
    args = parsed("--model", "hf", "--device", "cpu", "--include_path", "/my/tasks", "--tasks", "x")
    assert args.model == "hf" and args.device == "cpu" and args.include_path == ["/my/tasks", str(task_dir("test"))]
    # the task manager lm-eval builds from these arguments finds the demo tasks by name
    from lm_eval.tasks import TaskManager

    assert TaskManager(include_path=args.include_path).match_tasks(["demo_piqa"]) == ["demo_piqa"]


def test_one_note_replaces_the_kernel_fallback_warnings_on_the_cpu():
    code = """
import utrc
for ref in ("demo:mamba2", "demo:mamba"):
    model, tokenizer = utrc.load_model(ref)
    ids = tokenizer("tom owns a dog .", return_tensors="pt").input_ids
    model(ids); model(ids)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(CPU_KERNEL_NOTE) == 1
    assert "falling back to its reference PyTorch implementation" not in proc.stderr
