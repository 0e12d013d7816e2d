"""Read what one model's run produced, as the workflow's manifest lists it, into plain Python values.

The manifest (`utrc-report-manifest/1`, written by the workflow's `report` rule) names every file:

    {"format": "utrc-report-manifest/1",
     "model": {"ref": "demo:mamba2", "name": "demo-mamba2"},
     "budgets": {"10": 0.1, "30": 0.3},                          # tag -> nominal FLOPs reduction
     "files": {
       "calibration": {"summary": ".../summary.json", "table": ".../table.parquet"},
       "policies":    {"utrc-searched": {"10": ".../x.json", ...}, "utrc-paper": ..., "evit": ..., "tome": ...},
       "search":      {"10": {"trials": ".../trials.csv", "pareto": ".../pareto.csv"}, ...},
       "evaluations": {"dense": ".../dense.json", "tome": {"10": ...}, ...},    # utrc-results/1 files
       "profiles":    {"10": ".../flops10.json", ...}},                         # utrc-profile/1 files
     "settings": {...the validated workflow configuration...},
     "workflow": {"snakemake": "9.27.1", "python": "3.11.7"}}

Relative paths are relative to the working directory the manifest was written from (the
repository root); `load_run` resolves them against `root`. A listed file that does not exist is
reported in `Run.missing` and its part of the page is left out, so a partial run still renders.
Only the files listed are read: results of budgets no longer configured never leak in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from utrc.names import RUNS

MANIFEST_FORMAT = "utrc-report-manifest/1"
METHODS = RUNS  # table order, as the paper's tables
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


class ReportError(ValueError):
    """The manifest or a file it lists cannot be read."""


@dataclass
class Run:
    """Everything the page shows for one model; absent parts are None / empty."""

    manifest: dict
    root: Path
    calibration: dict | None = None  # summary JSON
    calibration_table: list[dict] | None = None  # long table rows
    policies: dict = field(default_factory=dict)  # method -> tag -> (path, policy dict)
    trials: dict = field(default_factory=dict)  # tag -> list of row dicts
    pareto: dict = field(default_factory=dict)  # tag -> list of row dicts: search.export's non-dominated trials
    evaluations: dict = field(default_factory=dict)  # method -> tag ("" for dense) -> results doc
    profiles: dict = field(default_factory=dict)  # tag -> profile doc
    comparisons: dict = field(default_factory=dict)  # tag -> utrc-compare/1 doc (utrc.compare)
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def ref(self) -> str:
        return self.manifest["model"]["ref"]

    @property
    def budgets(self) -> dict[str, float]:
        return dict(sorted(self.manifest["budgets"].items(), key=lambda kv: kv[1]))


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"manifest not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"manifest {path} is not JSON: {err}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ReportError(f"{path}: format: expected {MANIFEST_FORMAT!r}, got {manifest.get('format')!r}")
    for key in ("model", "budgets", "files"):
        if key not in manifest:
            raise ReportError(f"{path}: missing key {key!r} (see reports/data.py for the manifest's fields)")
    return manifest


def load_run(manifest: dict, root: str | Path = ".") -> Run:
    """Read every file the manifest lists (missing ones recorded in `Run.missing`)."""
    run = Run(manifest=manifest, root=Path(root))
    files = manifest["files"]

    cal = files.get("calibration") or {}
    if cal.get("summary"):
        run.calibration = _json(run, cal["summary"])
    if cal.get("table"):
        run.calibration_table = _table(run, cal["table"])
    for method, by_tag in (files.get("policies") or {}).items():
        for tag, path in by_tag.items():
            doc = _json(run, path)
            if doc is not None:
                run.policies.setdefault(method, {})[tag] = (path, doc)
    for tag, tables in (files.get("search") or {}).items():
        if tables.get("trials"):
            rows = _table(run, tables["trials"])
            if rows is not None:
                run.trials[tag] = rows
        if tables.get("pareto"):
            rows = _table(run, tables["pareto"])
            if rows is not None:
                run.pareto[tag] = rows
    for method, entry in (files.get("evaluations") or {}).items():
        for tag, path in ({"": entry} if isinstance(entry, str) else entry).items():
            doc = _json(run, path)
            if doc is not None:
                if doc.get("format") != "utrc-results/1":
                    raise ReportError(f"{path}: format: expected 'utrc-results/1', got {doc.get('format')!r}")
                run.evaluations.setdefault(method, {})[tag] = doc
    for tag, path in (files.get("profiles") or {}).items():
        doc = _json(run, path)
        if doc is not None:
            run.profiles[tag] = doc
    for tag, path in (files.get("compare") or {}).items():
        doc = _json(run, path)
        if doc is not None:
            if doc.get("format") != "utrc-compare/1":
                raise ReportError(f"{path}: format: expected 'utrc-compare/1', got {doc.get('format')!r}")
            run.comparisons[tag] = doc
    return run


def _resolve(run: Run, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else run.root / p


def _json(run: Run, path: str):
    p = _resolve(run, path)
    if not p.is_file():
        run.missing.append(str(path))
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{p} is not JSON: {err}") from None


def _table(run: Run, path: str) -> list[dict] | None:
    """A CSV or parquet table as a list of dicts (numbers as Python numbers; empty cells None)."""
    p = _resolve(run, path)
    if not p.is_file():
        run.missing.append(str(path))
        return None
    try:
        frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except (ValueError, OSError) as err:  # pandas' parser errors are ValueErrors
        raise ReportError(f"{p} is not a readable table: {err}") from None
    return records(frame)


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of plain Python values: NaN -> None, numpy scalars -> int / float / str."""
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _clean(v):
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# --- the paper's published numbers -------------------------------------------------------------


def paper_reference(ref: str) -> dict | None:
    """The paper's rows for `ref` if it is one of its checkpoints (Hugging Face "-hf" ids included):
    {"results": [row, ...], "efficiency": [row, ...]}; None for any other model."""
    key = ref.strip().rstrip("/")
    key = key.removesuffix("-hf")
    out = {}
    for name in ("results", "efficiency"):
        frame = pd.read_csv(REFERENCE_DIR / f"paper_{name}.csv")
        out[name] = records(frame[frame.model == key])
    return out if out["results"] else None
