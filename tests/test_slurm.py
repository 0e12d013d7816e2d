"""The workflow on a real SLURM cluster: `snakemake --profile profiles/slurm` on a single-node cluster with
accounting (.ci/slurm-single-node.sh: munge, MariaDB, slurmdbd, slurmctld, slurmd), the tiny run of
tests/test_workflow.py. Every model-running job must go through sbatch (sacct lists it, COMPLETED) and the
results must equal a local run of the same configuration.

Skipped where SLURM is not installed, unless UTRC_REQUIRE_SLURM=1 (set by .ci/run), which makes a missing
SLURM a failure. Where no controller answers, the test starts the cluster (as root) and stops it after.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import ROOT, SNAKEMAKE, TINY, snakemake, tiny_model  # noqa: F401 (tiny_model is a fixture)

from utrc.loading import CPU_KERNEL_NOTE

SETUP = ROOT / ".ci" / "slurm-single-node.sh"
REQUIRED = os.environ.get("UTRC_REQUIRE_SLURM") == "1"
SUBMITTED_RULES = {"calibrate", "search_worker", "evaluate_dense", "evaluate", "profile"}  # the rest are local rules


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"UTRC_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def controller_up() -> bool:
    ping = subprocess.run(["scontrol", "ping"], check=False, capture_output=True, text=True)
    return "is UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm_cluster():
    """A SLURM controller that answers: the running one, or one this fixture starts (and stops after)."""
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        unavailable("SLURM is not installed (sbatch, sacct): apt-get install slurm-wlm slurmdbd munge mariadb-server")
    if controller_up():
        yield
        return
    if os.geteuid() != 0:
        unavailable("no SLURM controller answers and starting one needs root (.ci/slurm-single-node.sh start)")
    state = tempfile.mkdtemp(prefix="utrc-slurm-")  # under /tmp: the daemons' users must reach it
    os.chmod(state, 0o755)
    start = subprocess.run(["bash", str(SETUP), "start", state], check=False, capture_output=True, text=True,
                           timeout=300)
    if start.returncode != 0:
        subprocess.run(["bash", str(SETUP), "stop", state], check=False, capture_output=True)
        pytest.fail(f"the single-node SLURM cluster did not start:\n{start.stdout[-2000:]}{start.stderr[-2000:]}")
    try:
        yield
    finally:
        subprocess.run(["bash", str(SETUP), "stop", state], check=False, capture_output=True, timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def sacct_jobs(workdir: Path, since: str) -> list[dict]:
    """The SLURM jobs started in `workdir` since `since`, as accounting recorded them."""
    fields = ["JobID", "State", "Comment", "WorkDir", "Partition"]
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", since, "-o", ",".join(fields)], capture_output=True,
                         text=True, check=True).stdout
    jobs = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return [j for j in jobs if Path(j["WorkDir"]) == workdir]


def results_of(workdir: Path) -> dict:
    """What a run computed, without what legitimately differs between two runs (dates, durations, hosts)."""
    results = workdir / "results" / "tiny"
    out = {}
    for path in sorted((results / "policies").glob("*.json")):
        policy = json.loads(path.read_text())
        provenance = policy.pop("provenance")
        out[path.name] = {**policy, "trial": provenance.get("trial"), "objective": provenance.get("objective")}
    trials = pd.read_csv(results / "search" / "flops0.15" / "seed0" / "trials.csv")
    timing = [c for c in trials.columns if c in ("seconds", "datetime_start", "datetime_complete", "duration")]
    trials = trials.drop(columns=timing)
    out["trials.csv"] = trials.astype(object).where(trials.notna(), None).to_dict("list")  # NaN != NaN
    for path in sorted((results / "eval").glob("*.json")):
        doc = json.loads(path.read_text())
        out[path.name] = {task: (t["score"], t["realized_flops_reduction"]) for task, t in doc["tasks"].items()}
    return out


def test_the_workflow_runs_through_slurm_as_it_runs_locally(slurm_cluster, tiny_model, tmp_path):  # noqa: F811
    models = json.dumps([{"ref": str(tiny_model), "name": "tiny"}])
    args = ["--configfile", str(TINY), "--config", f"models={models}"]
    cluster, local = tmp_path / "slurm", tmp_path / "local"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))

    # the local run goes on while SLURM schedules (its own process, its own directory)
    local_run = subprocess.Popen([*SNAKEMAKE, "-d", str(local), "--cores", "2", *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    # the profile as shipped; only the paper-sized memory requests are lowered for this small node, the way
    # docs/workflow.md says to change a resource for one run, and the plugin checks job states every 5 s
    memory = [f"{rule}:mem_mb=2000" for rule in sorted(SUBMITTED_RULES)]
    started = time.time()
    try:
        proc = snakemake(cluster, "--profile", str(ROOT / "profiles" / "slurm"), "--set-resources", *memory,
                         "--slurm-init-seconds-before-status-checks", "5", *args, timeout=480)
        slurm_seconds = time.time() - started
        local_output, _ = local_run.communicate(timeout=300)
    finally:
        local_run.kill()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert local_run.returncode == 0, local_output[-4000:]

    jobs = sacct_jobs(cluster, since)
    rules = {j["Comment"].removeprefix("rule_").split("_wildcards_")[0] for j in jobs}
    assert rules == SUBMITTED_RULES, jobs
    assert {j["State"] for j in jobs} == {"COMPLETED"}, jobs
    assert {j["Partition"] for j in jobs} == {"gpu"}  # the profile's default-resources reached every job
    # the Snakefile's onsuccess: the report to open, the policy file to deploy per model and budget
    assert "Open the report: reports-out/index.html" in proc.stdout + proc.stderr
    assert "tiny  budget 0.15:  results/tiny/policies/tiny_utrc-searched_flops0.15.json  (" in proc.stdout + proc.stderr
    # on the CPU: the note once in the terminal, each job's log has it instead of transformers' warnings
    assert (proc.stdout + proc.stderr).count("utrc note: jobs run on the CPU") == 1
    logs = [log.read_text() for log in (cluster / "results" / "tiny" / "logs").glob("*.log")]
    assert any(CPU_KERNEL_NOTE in log for log in logs)
    assert not any("falling back to its reference PyTorch implementation" in log for log in logs)

    assert results_of(cluster) == results_of(local)
    for run in (cluster, local):
        assert (run / "reports-out" / "tiny.html").is_file() and (run / "results" / "tiny" / "profile").is_dir()
    print(f"SLURM run: {slurm_seconds:.0f} s, {len(jobs)} sbatch jobs")
