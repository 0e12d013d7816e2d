# The configuration layer: validation with defaults, model directory names, paths and job arguments.
#
# Everything a rule needs is derived here once, from the validated `config`; rules take their paths
# from the helpers below. Only utrc.names is imported (the run names and the policy file paths,
# defined once for the workflow and search.export alike; it needs no torch).

import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from utrc.names import POLICY_RUNS, budget_tag, policy_path, seed_dir, seed_policy_path


SCHEMA = "../schemas/config.schema.yaml"


def _validate_config(cfg):
    """Check `cfg` (stop with one line per problem, naming the key), then fill in the defaults."""
    import importlib.util

    import yaml

    here = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
    with open(here / SCHEMA) as f:
        schema = yaml.safe_load(f)
    # loaded by path, not imported: workflow/ is not a package and must not shadow module names
    spec = importlib.util.spec_from_file_location("configcheck", here / "../schemas/configcheck.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    check.coerce(cfg, schema)
    lines = check.problems(cfg, schema)
    if lines:
        raise WorkflowError(
            "invalid configuration:\n" + "\n".join(f"  {line}" for line in lines) + "\nSee docs/workflow.md (or "
            "workflow/schemas/config.schema.yaml) for the allowed keys and values."
        )
    validate(cfg, SCHEMA)  # Snakemake's own check, which also sets the defaults


_validate_config(config)


def model_slug(ref):
    """A model reference -> a directory name: demo:mamba2 -> demo-mamba2,
    state-spaces/mamba2-2.7b -> state-spaces--mamba2-2.7b, /path/to/ckpt -> ckpt."""
    ref = ref.strip().rstrip("/")
    if ref.startswith(("/", "./", "../", "~")):
        ref = Path(ref).name  # a local directory: its own name
    slug = ref.replace("/", "--").replace(":", "-")
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", slug).strip("-.")
    if not slug:
        raise WorkflowError(f"invalid configuration: models: cannot derive a directory name from {ref!r}; give `name:`")
    return slug


def _models(cfg):
    out = {}
    for i, entry in enumerate(cfg["models"]):
        entry = {"ref": entry} if isinstance(entry, str) else dict(entry)
        slug = entry.get("name") or model_slug(entry["ref"])
        if slug == "index":
            raise WorkflowError(f"invalid configuration: models[{i}]: the name 'index' is the report index's; give another `name:`")
        if slug in out:
            raise WorkflowError(
                f"invalid configuration: models[{i}]: directory name {slug!r} is already used by "
                f"{out[slug]['ref']!r}; give one of them another `name:`"
            )
        budgets = sorted(entry.get("budgets") or cfg["budgets"])
        tags = [budget_tag(b) for b in budgets]
        if len(set(tags)) != len(tags):
            raise WorkflowError(f"invalid configuration: budgets of {entry['ref']!r}: {budgets} repeat a budget")
        out[slug] = {
            "ref": entry["ref"],
            "slug": slug,
            "budgets": {tag: b for tag, b in zip(tags, budgets)},
        }
    return out


MODELS = _models(config)
R = config["results_dir"].rstrip("/")
REPORTS = config["report_dir"].rstrip("/")
GPU = 1 if config["device"].startswith("cuda") else 0  # the `gpu` resource of model-running jobs (SLURM: --gpus)
THREADS = config["threads"]
WORKERS = config["search"]["workers"]
SEEDS = range(config["search"]["seeds"])
EVAL_RUNS = config["evaluation"]["methods"]
COMPARED = [r for r in EVAL_RUNS if r != "utrc-searched"] if "utrc-searched" in EVAL_RUNS else []
PROFILE = config["profile"]
# Jobs import the repository's packages (search, reports, demo) from any working directory.
shell.prefix("set -euo pipefail; export PYTHONPATH=" + shlex.quote(workflow.basedir)
             + "${{PYTHONPATH:+:$PYTHONPATH}} TOKENIZERS_PARALLELISM=false; ")


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    budget="[0-9]*\\.?[0-9]+",
    run="|".join(POLICY_RUNS),
    seed="[0-9]+",
    worker="[0-9]+",


# --- job arguments ---------------------------------------------------------------------------------


def flags(section, *keys):
    """`--key value` for the keys of a config section a command uses, shell-quoted (underscores become
    dashes; None is left out, a list is joined with commas). Only these keys are in a job's params, so
    changing another one (e.g. adding an evaluation method) does not rerun the job."""
    out = []
    for key in keys:
        value = config[section][key]
        if value is not None:
            value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            out += ["--" + key.replace("_", "-"), value]
    return shlex.join(out)


MODEL_ARGS = shlex.join(["--device", config["device"]] + (["--dtype", config["dtype"]] if config["dtype"] else []))


def model_ref(wc):
    return MODELS[wc.model]["ref"]


def budget_of(wc):
    try:
        return MODELS[wc.model]["budgets"][wc.budget]
    except KeyError:
        raise WorkflowError(f"no configured model {wc.model!r} with budget {wc.budget}") from None


# --- paths -----------------------------------------------------------------------------------------


def log_file(model, name):
    return f"{R}/{model}/logs/{name}.log"


def calibration_summary(model):
    return f"{R}/{model}/calibration/summary.json"


def calibration_table(model):
    return f"{R}/{model}/calibration/table.parquet"


def seed_folder(model, tag, seed):
    """A search seed's study, markers and trial tables: results/MODEL/search/flopsB/seedS."""
    return f"{R}/{model}/{seed_dir(tag, seed)}"


def study_name(model, tag, seed):
    return f"{model}-flops{tag}-seed{seed}"


def study_storage(model, tag, seed):
    url = config["search"]["storage"]
    return url if url else f"{seed_folder(model, tag, seed)}/study.journal"


def worker_markers(model, tag, seed):
    return [f"{seed_folder(model, tag, seed)}/worker{w}.done" for w in range(WORKERS)]


def search_tables(model, tag, seed):
    return {name: f"{seed_folder(model, tag, seed)}/{name}.csv" for name in ("trials", "pareto")}


def policy_file(model, run, tag):
    """The deployable policy file of (model, run, budget), e.g. demo-mamba2_utrc-searched_flops0.3.json."""
    return f"{R}/{model}/{policy_path(model, run, tag)}"


def seed_policy_file(model, tag, seed):
    return f"{R}/{model}/{seed_policy_path(model, tag, seed)}"


def eval_file(model, run, tag=None, seed=None):
    if run == "dense":
        return f"{R}/{model}/eval/dense.json"
    return f"{R}/{model}/eval/{run}_flops{tag}" + ("" if seed is None else f"_seed{seed}") + ".json"


def searched_evals(model, tag):
    """The evaluations the comparison averages over: one per search seed."""
    if len(SEEDS) == 1:
        return [eval_file(model, "utrc-searched", tag)]
    return [eval_file(model, "utrc-searched", tag, seed) for seed in SEEDS]


def compare_file(model, tag):
    return f"{R}/{model}/compare/flops{tag}.json"


def profile_file(model, tag):
    return f"{R}/{model}/profile/flops{tag}.json"


def model_outputs(model):
    """Every file the report of `model` reads, by kind (the report rule's input and its manifest)."""
    tags = list(MODELS[model]["budgets"])
    return {
        "calibration": {"summary": calibration_summary(model), "table": calibration_table(model)},
        "policies": {r: {t: policy_file(model, r, t) for t in tags} for r in POLICY_RUNS},
        "search": {t: search_tables(model, t, 0) for t in tags},  # the first seed's trials
        "evaluations": {
            r: eval_file(model, "dense") if r == "dense" else {t: eval_file(model, r, t) for t in tags} for r in EVAL_RUNS
        },
        "compare": {t: compare_file(model, t) for t in tags} if COMPARED else {},
        "profiles": {t: profile_file(model, t) for t in tags} if PROFILE["enabled"] else {},
    }


def flat_files(tree):
    if isinstance(tree, dict):
        return [f for v in tree.values() for f in flat_files(v)]
    return [tree]


def report_page(model):
    return f"{REPORTS}/{model}.html"
