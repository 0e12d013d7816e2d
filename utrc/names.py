"""The project's vocabulary, defined once: the five runs, where their policy files live, and the
six benchmarks with the metric the paper reports for each (docs/method.md §2, §4).

A *run* is what the workflow, the results and the report compare; a policy file's `method` field
is the reduction it applies (docs/method.md §3). Two runs share the method `utrc`: the paper's
hand-set schedule and the searched policy.

This module imports nothing heavy: the workflow plans with it and the report renders with it.
"""

from __future__ import annotations

RUNS = ("dense", "tome", "evit", "utrc-paper", "utrc-searched")  # the report's column order
POLICY_RUNS = RUNS[1:]  # a policy file per budget; dense needs none
SCHEDULE_RUNS = ("tome", "evit", "utrc-paper")  # the paper's layers, one keep ratio meeting the budget
METHOD = {"dense": "dense", "tome": "tome", "evit": "evit", "utrc-paper": "utrc", "utrc-searched": "utrc"}

# The paper's six benchmarks in its tables' column order, each with the metric it reports
# (lm-eval names); the average is over these. LAMBADA's perplexity is reported beside it.
BENCHMARKS = {
    "lambada_openai": "acc",
    "hellaswag": "acc_norm",
    "piqa": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "winogrande": "acc",
}
DEMO_TASKS = {f"demo_{name.removesuffix('_openai')}": name for name in BENCHMARKS}  # stand-in -> benchmark
PAPER_METRICS = {**BENCHMARKS, **{demo: BENCHMARKS[name] for demo, name in DEMO_TASKS.items()}}
PAPER_EXTRA_METRICS = {"lambada_openai": ("perplexity",), "demo_lambada": ("perplexity",)}


def budget_tag(budget: float | str) -> str:
    """0.3 -> "0.3", 0.125 -> "0.125": a budget as file and study names carry it. A string is taken
    as a tag already (the workflow passes tags and its "{budget}" wildcard)."""
    return budget if isinstance(budget, str) else f"{round(float(budget), 6):g}"


def policy_path(model: str, run: str, budget: float | str) -> str:
    """Where the policy file of (model, run, budget) lives, relative to the model's results folder:
    policies/demo-mamba2_utrc-searched_flops0.3.json. The name alone says what the file is."""
    return f"policies/{model}_{run}_flops{budget_tag(budget)}.json"


def seed_dir(budget: float | str, seed: int | str) -> str:
    """The folder of one search seed's study and tables, relative to the model's results folder."""
    return f"search/flops{budget_tag(budget)}/seed{seed}"


def seed_policy_path(model: str, budget: float | str, seed: int | str) -> str:
    """The best policy of one search seed (written when a budget is searched with several seeds)."""
    return f"{seed_dir(budget, seed)}/{model}_utrc-searched_flops{budget_tag(budget)}.json"
