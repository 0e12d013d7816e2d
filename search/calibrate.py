"""Per-layer calibration statistics of a Mamba / Mamba-2 LM on N windows of L tokens.

For every block and every importance source (`ssm_output`, `scan_output` on Mamba-2,
`mixer_output`), over the reducible prefix of each window (all but the last `score_last`
tokens, which are protected as in docs/method.md §4):

* ``importance``: for each metric (clip, l1, l2, signed) the distribution of per-token scores:
  quantiles, mean, std, and `rel_iqr` = (q75 - q25) / |median|, which is ~0 when a source gives
  every token the same score (e.g. `l2` after Mamba-2's gated RMSNorm with unit weights);
* ``activation``: `positive_share`, the share of the source's activations that are > 0 (the
  share `clip` sees);
* ``match``: the distribution of g(a), the cosine similarity of each A token to its best B match
  (docs/method.md §1 steps 3-4, with A / B classified by that metric);
* ``sensitivity``: KL(dense || reduced) of the next-token distribution at the scored positions
  when UTRC reduces at that block alone, at each keep of `sensitivity_keeps` (0.9 / 0.8 / 0.7),
  with the importance pairs of `sensitivity_pairs` (default the paper's clip/ssm_output).

Written as a long table (`layer, kind, source, metric, keep, stat, value`; parquet or CSV by the
file's suffix) and a JSON summary with the model, data and settings hashes, the sensitivity
curves and a per-pair `informative` flag that the search uses.

    python -m search.calibrate --model demo:mamba2 --text demo --n-sequences 32 --seq-len 256 \\
        --out-table calib.parquet --out-summary calib.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply
from utrc.io import atomic_write_bytes, atomic_write_json, atomic_write_text, now, versions
from utrc.policy import IMPORTANCE_METRICS
from utrc.reduction import importance_scores

from . import provenance
from .objective import _log_probs, dense_model, score_from

FORMAT = "utrc-calibration/1"
INFORMATIVE_REL_IQR = 0.01  # median over blocks below 1 %: scores differ only by eps / float effects


class CalibrationError(ValueError):
    """Bad calibration input (raised before any forward pass)."""


@dataclass(frozen=True)
class CalibrationConfig:
    score_last: int = 8  # protected, scored suffix of each window
    sensitivity_keeps: tuple[float, ...] = (0.9, 0.8, 0.7)
    sensitivity_pairs: tuple[str, ...] = ("clip/ssm_output",)
    metrics: tuple[str, ...] = IMPORTANCE_METRICS
    sources: tuple[str, ...] | None = None  # None: every source the architecture has
    quantiles: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    batch_size: int = 16
    prune_share: float = 0.5  # of the sensitivity policies (the paper's settings otherwise)
    extra: dict = field(default_factory=dict, compare=False)  # recorded, not used (e.g. text spec)


@dataclass
class Calibration:
    table: "object"  # pandas.DataFrame, long format
    summary: dict


def sources_of(architecture: str) -> tuple[str, ...]:
    return ("ssm_output", "scan_output", "mixer_output") if architecture == "mamba2" else ("ssm_output", "mixer_output")


def calibrate(model, input_ids: torch.Tensor, config: CalibrationConfig = CalibrationConfig(), model_name: str = "",
              data: dict | None = None, progress=None) -> Calibration:
    """Statistics of `model` on token windows `input_ids` [N, L] (see the module docstring).
    `progress(message)`, if given, is called after each batch of the first pass and each block of the second."""
    say = progress or (lambda _msg: None)
    import pandas as pd

    shape = ModelShape.of(model)
    sources = config.sources or sources_of(shape.architecture)
    _check(input_ids, config, shape, sources)
    N, L = input_ids.shape
    P = L - config.score_last
    rows: list[dict] = []

    # pass 1: the dense forward, reading every source of every block (ReducedModel.block_sources)
    dense = dense_model(model)
    collector = _Collector(config.metrics, P)
    batches = input_ids.split(config.batch_size)
    with torch.inference_mode():
        starts = [dense.start(ids, protect_last=config.score_last) for ids in batches]
        finals = []
        for i, state in enumerate(starts):
            for layer in range(shape.n_layer):
                state, found = dense.block_sources(state, layer, sources)
                for source, y in found.items():
                    collector.see((layer, source), y)
            finals.append(dense.final_norm(state)[:, -config.score_last :])
            say(f"statistics: batch {i + 1}/{len(batches)}")
        dense_logp = _log_probs(dense, torch.cat(finals))  # [N, S, V]
    rows += collector.rows(config.quantiles)

    # pass 2: carry the dense stream block by block; reduce at each block alone
    spec = ModelSpec.of(shape, model_name)
    curves: dict[str, dict[int, list[float]]] = defaultdict(dict)
    with torch.inference_mode():
        states = starts
        for layer in range(shape.n_layer):
            for pair in config.sensitivity_pairs:
                metric, source = pair.split("/")
                curve = []
                for keep in config.sensitivity_keeps:
                    policy = Policy(method="utrc", model=spec, layers={layer: LayerSpec(keep)}, importance=metric,
                                    importance_source=source, prune_share=config.prune_share)
                    s = score_from(apply(model, policy), states, layer, dense_logp, config.score_last)
                    curve.append(s.kl)
                    for stat, value in (("kl", s.kl), ("top1_agreement", s.top1_agreement)):
                        rows.append(dict(layer=layer, kind="sensitivity", source=source, metric=metric, keep=keep,
                                         stat=stat, value=value))
                curves[pair][layer] = curve
            states = [dense.run(state, layer, layer + 1) for state in states]
            say(f"sensitivity: block {layer + 1}/{shape.n_layer}")

    table = pd.DataFrame(rows, columns=["layer", "kind", "source", "metric", "keep", "stat", "value"])
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "extra"}
    settings["sources"] = list(sources)
    model_info = {"name": model_name, "architecture": shape.architecture, "n_layer": shape.n_layer,
                  "d_model": shape.d_model, "hash": provenance.model_hash(model)}
    data_info = {"n_sequences": N, "seq_len": L, "hash": provenance.tensor_hash(input_ids), **(data or {})}
    summary = {
        "format": FORMAT,
        "model": model_info,
        "data": data_info,
        "settings": settings,
        "hashes": {
            "model": model_info["hash"],
            "data": data_info["hash"],
            "settings": provenance.json_hash(settings),
        },
        "sensitivity": {
            "keeps": list(config.sensitivity_keeps),
            "kl": {pair: {str(layer): c for layer, c in curve.items()} for pair, curve in curves.items()},
        },
        "importance_signal": _signal(table),
        "extra": config.extra,
        "versions": versions(),
        "created": now(),
    }
    summary["hash"] = provenance.json_hash(summary["hashes"])
    return Calibration(table, summary)


def save(cal: Calibration, table_path: str | Path, summary_path: str | Path) -> None:
    """Write the table (.parquet or .csv) and the JSON summary (which records the table's sha256)."""
    table_path, summary_path = Path(table_path), Path(summary_path)
    for p in (table_path, summary_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    if table_path.suffix == ".parquet":
        atomic_write_bytes(table_path, cal.table.to_parquet(index=False))
    elif table_path.suffix == ".csv":
        atomic_write_text(table_path, cal.table.to_csv(index=False))
    else:
        raise CalibrationError(f"table file {table_path}: expected a .parquet or .csv suffix")
    summary = dict(cal.summary, table={"path": table_path.name, "sha256": provenance.file_hash(table_path)})
    atomic_write_json(summary_path, summary)


def load_summary(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration summary not found: {path} (run python -m search.calibrate first)")
    summary = json.loads(path.read_text())
    if summary.get("format") != FORMAT:
        raise CalibrationError(
            f"{path}: not a calibration summary (format {summary.get('format')!r}, expected {FORMAT!r})")
    return summary


# --- collection -------------------------------------------------------------------------------


class _Collector:
    """Turns each block's sources into per-token scores and best-match similarities."""

    def __init__(self, metrics, prefix_len: int):
        self.metrics = metrics
        self.P = prefix_len
        self.scores = defaultdict(list)  # (layer, source, metric) -> [B, P] tensors
        self.match = defaultdict(list)  # (layer, source, metric) -> [B, |A|] tensors
        self.positive = defaultdict(lambda: [0, 0])  # (layer, source) -> [positive, total]

    def see(self, key, y: torch.Tensor) -> None:
        y = y[:, : self.P].float()  # [B, P, C] the reducible prefix
        pos = self.positive[key]
        pos[0] += int((y > 0).sum())
        pos[1] += y.numel()
        unit = torch.nn.functional.normalize(y, dim=-1)
        sim = torch.bmm(unit, unit.transpose(1, 2))  # [B, P, P]
        half = self.P // 2
        for metric in self.metrics:
            s = importance_scores(y, metric)  # [B, P]
            self.scores[key + (metric,)].append(s)
            order = torch.sort(s, dim=1, stable=True).indices  # ascending score, ties by position
            a, b = order[:, :half], order[:, half:]
            sim_ab = sim.gather(1, a[:, :, None].expand(-1, -1, self.P)).gather(2, b[:, None, :].expand(-1, half, -1))
            self.match[key + (metric,)].append(sim_ab.max(-1).values)  # [B, |A|]

    def rows(self, quantiles) -> list[dict]:
        out = []
        for (layer, source), (pos, total) in sorted(self.positive.items()):
            out.append(dict(layer=layer, kind="activation", source=source, metric="", keep=math.nan,
                            stat="positive_share", value=pos / total))
        for kind, store in (("importance", self.scores), ("match", self.match)):
            for (layer, source, metric), parts in sorted(store.items()):
                values = torch.cat([p.reshape(-1) for p in parts]).double()
                for stat, value in _distribution(values, quantiles).items():
                    out.append(dict(layer=layer, kind=kind, source=source, metric=metric, keep=math.nan,
                                    stat=stat, value=value))
        return out


def _distribution(values: torch.Tensor, quantiles) -> dict[str, float]:
    qs = torch.quantile(values, torch.tensor(quantiles, dtype=values.dtype))
    d = {f"q{round(q * 100):02d}": float(v) for q, v in zip(quantiles, qs, strict=True)}
    q25, q50, q75 = (float(torch.quantile(values, q)) for q in (0.25, 0.5, 0.75))
    mean, std = float(values.mean()), float(values.std()) if values.numel() > 1 else 0.0
    d.update(mean=mean, std=std, rel_iqr=(q75 - q25) / max(abs(q50), 1e-12))
    return d


def _signal(table) -> dict:
    """Per metric/source pair: median over blocks of rel_iqr, and whether it ranks tokens at all."""
    rel = table[(table.kind == "importance") & (table.stat == "rel_iqr")]
    out = {}
    for (metric, source), group in rel.groupby(["metric", "source"]):
        median = float(group.value.median())
        out[f"{metric}/{source}"] = {"median_rel_iqr": median, "informative": median > INFORMATIVE_REL_IQR}
    return out


def _check(input_ids: torch.Tensor, config: CalibrationConfig, shape: ModelShape, sources) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise CalibrationError(
            f"calibration set is empty: expected token windows [N, L] with N >= 1, got shape {tuple(input_ids.shape)}"
        )
    L = input_ids.shape[1]
    if not 1 <= config.score_last <= L - 4:
        raise CalibrationError(f"score_last {config.score_last}: expected 1 <= score_last <= L - 4 = {L - 4}")
    for keep in config.sensitivity_keeps:
        if not 0.0 < keep <= 1.0:
            raise CalibrationError(f"sensitivity keep {keep}: expected a number in (0, 1]")
    for metric in config.metrics:
        if metric not in IMPORTANCE_METRICS:
            raise CalibrationError(f"metric {metric!r}: expected one of {list(IMPORTANCE_METRICS)}")
    allowed = sources_of(shape.architecture)
    for source in sources:
        if source not in allowed:
            raise CalibrationError(f"source {source!r}: a {shape.architecture} model has {list(allowed)}")
    for pair in config.sensitivity_pairs:
        metric, _, source = pair.partition("/")
        if metric not in IMPORTANCE_METRICS or source not in allowed:
            raise CalibrationError(f"sensitivity pair {pair!r}: expected METRIC/SOURCE from "
                                   f"{list(IMPORTANCE_METRICS)} / {list(allowed)}")


# --- command line -----------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _strings(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="demo:mamba2, demo:mamba, a local directory or a hub id")
    ap.add_argument("--text", default="demo",
                    help="demo[:COUNT], a .txt/.jsonl/.json file, or hf:NAME[:CONFIG[:SPLIT]]")
    ap.add_argument("--seed", type=int, default=None, help="seed of the demo text generator (default: its own)")
    ap.add_argument("--n-sequences", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--score-last", type=int, default=8)
    ap.add_argument("--keeps", type=_floats, default=(0.9, 0.8, 0.7), help="sensitivity keep ratios, e.g. 0.9,0.8,0.7")
    ap.add_argument("--sensitivity-pairs", type=_strings, default=("clip/ssm_output",),
                    help="e.g. clip/ssm_output,l1/scan_output")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out-table", required=True, help="calibration table, .parquet or .csv")
    ap.add_argument("--out-summary", required=True, help="JSON summary")
    args = ap.parse_args(argv)
    try:
        _main(ap, args)
    except (CalibrationError, ValueError) as err:  # DataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(ap, args) -> None:
    from utrc import load_model

    from .data import load_documents, token_stream, windows

    if Path(args.out_table).suffix not in (".parquet", ".csv"):
        ap.error(f"--out-table {args.out_table}: expected a .parquet or .csv file")
    docs = load_documents(args.text, args.seed)  # bad text fails here, before the model is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    ids = windows(token_stream(docs, tokenizer), args.n_sequences, args.seq_len, part="head").to(args.device)
    config = CalibrationConfig(score_last=args.score_last, sensitivity_keeps=args.keeps,
                               sensitivity_pairs=args.sensitivity_pairs, batch_size=args.batch_size)
    cal = calibrate(model, ids, config, model_name=args.model,
                    data={"text": args.text, "seed": args.seed, "part": "head"},
                    progress=lambda msg: print(f"calibration {msg}", flush=True))
    save(cal, args.out_table, args.out_summary)
    print(f"calibration {cal.summary['hash'][:12]}: {len(cal.table)} rows -> {args.out_table}, {args.out_summary}")


if __name__ == "__main__":
    main()
