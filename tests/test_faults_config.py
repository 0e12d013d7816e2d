"""Bad workflow configurations: each stops at config load with a line naming the key.

Values the schema's types let through (NaN, infinity, a storage path that cannot exist) are caught
by workflow/scripts/configcheck.py, which workflow/rules/common.smk calls; the property-based test
drives the same check with generated bad configurations (no Snakemake start per example)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_values_that_pass_the_schema_types_stop_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "models: [{ref: 'demo:mamba2', budgets: [.inf]}]\n"
        "budgets: [nan]\n"  # a string in YAML: read as a number by the coercion of --config values
        "search: {storage: /dev/null/x}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n",
                           "--configfile", str(config)], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "invalid configuration" in out, out[-3000:]
    assert "budgets[0]: nan is not a finite number" in out
    assert "models[0].budgets[0]: inf is not a finite number" in out
    assert "search.storage: /dev/null is not a folder: the journal /dev/null/x cannot be created" in out
    assert "Building DAG" not in out and "MissingInputException" not in out
    yaml.safe_load(config.read_text())  # the file itself is valid YAML: only the values are wrong
