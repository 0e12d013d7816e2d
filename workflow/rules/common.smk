# The configuration layer: validation with defaults, model directory names, budget tags and paths.
#
# Everything a rule needs is derived here once, from the validated `config`; rules only format paths.
# No project package is imported (planning a run must not need torch): the scripts call the packages.

import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


SCHEMA = "../schemas/config.schema.yaml"


def _validate_config(cfg):
    """Check `cfg` (stop with one line per problem, naming the key), then fill in the defaults."""
    import importlib.util

    import yaml

    here = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
    with open(here / SCHEMA) as f:
        schema = yaml.safe_load(f)
    # loaded by path: putting workflow/scripts on sys.path would shadow modules (its profile.py)
    spec = importlib.util.spec_from_file_location("configcheck", here / "../scripts/configcheck.py")
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


def budget_tag(reduction):
    """0.3 -> "0.3", 0.125 -> "0.125": the budget as file and study names carry it (as search.study does)."""
    return f"{round(reduction, 6):g}"


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
DEVICE = config["device"]
GPU = 1 if DEVICE.startswith("cuda") else 0  # the `gpu` resource of model-running jobs (SLURM: --gpus)
THREADS = config["threads"]
WORKERS = config["search"]["workers"]
EVAL_METHODS = config["evaluation"]["methods"]
POLICY_METHODS = ("utrc-searched", "utrc-paper", "evit", "tome")  # the deployable files of each budget
EXPORT_NAMES = {"utrc-searched": "searched", "utrc-paper": "paper", "evit": "evit", "tome": "tome"}  # search.export's
PROFILE = config["profile"]


def job_settings(section, *keys):
    """The keys of a config section that a job's command uses. Only these are the job's params, so
    changing anything else (e.g. adding an evaluation method) does not rerun the existing jobs."""
    return {k: config[section][k] for k in keys}


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    budget="[0-9]*\\.?[0-9]+",
    method="tome|evit|utrc-paper|utrc-searched",
    worker="[0-9]+",


def budget_of(wc):
    try:
        return MODELS[wc.model]["budgets"][wc.budget]
    except KeyError:
        raise WorkflowError(f"no configured model {wc.model!r} with budget {wc.budget}") from None


def study_name(wc):
    return f"{wc.model}-flops{wc.budget}"


def study_storage(wc):
    url = config["search"]["storage"]
    return url if url else f"{R}/{wc.model}/search/flops{wc.budget}/study.journal"


# --- paths -----------------------------------------------------------------------------------------


def calibration_summary(model):
    return f"{R}/{model}/calibration/summary.json"


def calibration_table(model):
    return f"{R}/{model}/calibration/table.parquet"


def policy_file(model, method, tag):
    """The deployable policy file of (model, method, budget), e.g. demo-mamba2_utrc-searched_flops0.3.json."""
    return f"{R}/{model}/policies/{model}_{method}_flops{tag}.json"


def worker_markers(model, tag):
    return [f"{R}/{model}/search/flops{tag}/worker{w}.json" for w in range(WORKERS)]


def eval_file(model, method, tag=None):
    return f"{R}/{model}/eval/dense.json" if method == "dense" else f"{R}/{model}/eval/{method}_flops{tag}.json"


def profile_file(model, tag):
    return f"{R}/{model}/profile/flops{tag}.json"


def search_tables(model, tag):
    return {"trials": f"{R}/{model}/search/flops{tag}/trials.csv", "pareto": f"{R}/{model}/search/flops{tag}/pareto.csv"}


def model_outputs(model):
    """Every file the report of `model` reads, by kind (the report rule's input and its manifest)."""
    tags = list(MODELS[model]["budgets"])
    files = {
        "calibration": {"summary": calibration_summary(model), "table": calibration_table(model)},
        "policies": {m: {t: policy_file(model, m, t) for t in tags} for m in POLICY_METHODS},
        "search": {t: search_tables(model, t) for t in tags},
        "evaluations": {},
        "profiles": {t: profile_file(model, t) for t in tags} if PROFILE["enabled"] else {},
    }
    for method in EVAL_METHODS:
        files["evaluations"][method] = (
            eval_file(model, "dense") if method == "dense" else {t: eval_file(model, method, t) for t in tags}
        )
    return files


def flat_files(tree):
    if isinstance(tree, dict):
        return [f for v in tree.values() for f in flat_files(v)]
    return [tree]


def report_page(model):
    return f"{REPORTS}/{model}.html"
