"""Command line: run (or resume) the Optuna study of one (model, FLOPs budget).

    python -m search.run --model demo:mamba2 --budget 0.3 --storage results/demo-mamba2/study.journal \\
        --calibration results/demo-mamba2/calibration.json --n-trials 200

Order of work: arguments and the text source are checked, the model is loaded, the search space
and the budget are checked against the model (an unreachable budget, a searchable layer outside
the model or an empty calibration set stop here, before any trial), the dense outputs of the dev
set are computed once, then the study is created or resumed and runs until it holds `--n-trials`
COMPLETE trials. Several workers may run this command on the same `--storage` at once, with
the same `--seed` (each trial's draws are seeded by its own number).

Ctrl-C stops it with status 130; a kill (SIGTERM, SIGKILL, a lost machine) stops it anywhere.
Either way the COMPLETE trials are kept and running the same command again resumes the study (see
search/study.py and search/storage.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass

import optuna
import torch

from utrc import ModelShape, ModelSpec, PolicyError
from utrc.io import atomic_write_text
from utrc.policy import IMPORTANCE_METRICS, STRATEGIES

from . import provenance
from .calibrate import CalibrationError, load_summary, sources_of
from .data import DataError, document_rows, load_documents, token_stream, windows
from .objective import DenseReference
from .space import Budget, SearchSpace, SpaceError, check_reachable, default_layers, fit_to_budget, parse_layers
from .study import (
    Objective,
    StudyConfig,
    StudyError,
    best_so_far,
    create_or_resume,
    default_study_name,
    run,
    space_from_calibration,
    validate,
)


def parse_budget(text: str) -> float:
    """"0.3", "30" or "30%" -> 0.3."""
    value = float(text.rstrip("%"))
    return value / 100 if text.endswith("%") or value >= 1 else value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m search.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="demo:mamba2, demo:mamba, a local directory or a hub id")
    ap.add_argument("--budget", required=True, type=parse_budget, help="nominal FLOPs reduction: 0.3, 30 or 30%%")
    ap.add_argument("--storage", required=True, help="journal file path, or an RDB URL (sqlite:///x.db, postgresql://...)")
    ap.add_argument("--study-name", default=None, help="default: <model>-flops<budget %%>")
    ap.add_argument("--n-trials", type=int, default=200, help="COMPLETE trials the study should hold")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed; each trial reseeds it with its own number, so "
                    "workers sharing a seed never propose the same trials")
    g = ap.add_argument_group("dev set (held out from calibration: taken from the tail of the text)")
    g.add_argument("--text", default="demo", help="demo[:COUNT], a .txt/.jsonl/.json file, or hf:NAME[:CONFIG[:SPLIT]]")
    g.add_argument("--text-seed", type=int, default=None, help="seed of the demo text generator (default: its own)")
    g.add_argument("--dev-unit", choices=("window", "document"), default="window",
                   help="window: N windows of --dev-length tokens cut from the joined text; document: N whole "
                        "documents (the last ones of the text), each truncated to its last --dev-length tokens")
    g.add_argument("--dev-sequences", type=int, default=16)
    g.add_argument("--dev-length", type=int, default=128)
    g.add_argument("--score-last", type=int, default=8, help="protected, scored tokens at the end of each window")
    g.add_argument("--batch-size", type=int, default=8, help="dev rows per forward pass (the PyTorch Mamba-2 scan "
                   "needs memory quadratic in chunks per row: keep batches small for long rows)")
    g = ap.add_argument_group("search space")
    g.add_argument("--calibration", default=None, help="calibration summary JSON (python -m search.calibrate)")
    g.add_argument("--layers", default=None, help="searchable blocks, e.g. '4-' or '4-10,12' (default: from the "
                   "paper's first layer to the last block but one)")
    g.add_argument("--importance", type=_csv, default=None,
                   help="METRIC/SOURCE pairs to search (default: every pair of the architecture)")
    g.add_argument("--residual-strategies", type=_csv, default=STRATEGIES)
    g.add_argument("--hidden-strategies", type=_csv, default=("hybrid",))
    g.add_argument("--prune-share-range", type=lambda t: tuple(float(x) for x in t.split(",")), default=(0.0, 1.0))
    g.add_argument("--per-layer-prune-share", action="store_true")
    g.add_argument("--keep-grid", type=float, default=0.001, help="keep ratios are multiples of this (0: continuous)")
    g = ap.add_argument_group("budget and objectives")
    g.add_argument("--seq-len", type=int, default=2048, help="sequence length the nominal FLOPs are costed at")
    g.add_argument("--protect-last", type=int, default=1)
    g.add_argument("--multi-objective", action="store_true", help="quality vs FLOPs: Pareto front over targets in "
                   "[budget, --max-budget]")
    g.add_argument("--max-budget", type=parse_budget, default=None)
    g.add_argument("--quality", default="kl", choices=("kl", "dev_error", "kl+dev_error"))
    g.add_argument("--dev-error-weight", type=float, default=1.0)
    g.add_argument("--dev-tasks", default="demo",
                   help="lm-eval tasks for dev accuracy ('demo': the demo tasks' dev split)")
    g.add_argument("--dev-limit", type=int, default=None, help="items per dev task")
    g.add_argument("--stale-after", type=float, default=900.0, help="seconds without a heartbeat after which a "
                   "RUNNING trial of a worker on another host counts as stale (workers on this host are asked "
                   "directly)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--done", default=None, help="write this marker file once the study holds --n-trials COMPLETE "
                    "trials (what a workflow waits for)")
    return ap


def main(argv=None) -> None:
    """Entry point; bad input exits with `error: <message>` (status 2) before any trial runs."""
    args = build_parser().parse_args(argv)
    try:
        _main(args)
    except (DataError, SpaceError, StudyError, CalibrationError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException as err:  # re-raised unless it is an interruption
        if not _interrupted(err):
            raise
        print(f"interrupted: the study's COMPLETE trials are kept in {args.storage}; run the same command again to "
              "resume it", file=sys.stderr, flush=True)
        if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
            # Optuna's heartbeat thread, when the interruption came between its start and its stop,
            # beats on and would keep the process alive: leave now (the journal takes any state)
            sys.stdout.flush()
            os._exit(130)
        raise SystemExit(130) from None


def _interrupted(err: BaseException | None) -> bool:
    """A KeyboardInterrupt, or an error raised while handling one: Optuna 5.0's trial loop, when
    interrupted while it reports a trial, fails with an UnboundLocalError instead."""
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return True
        err = err.__context__
    return False


@dataclass
class Prepared:
    """Everything a worker needs, built once: the study and the objective (model, cached dense outputs)."""

    study: optuna.Study
    objective: Objective
    name: str
    layers: tuple[int, ...]
    setup_seconds: float


def _main(args) -> None:
    say = (lambda *_: None) if args.quiet else (lambda msg: print(msg, flush=True))
    prep = prepare(args)
    for note in prep.objective.config.space.notes:
        say(f"note: {note}")
    say(f"study {prep.name} ({args.storage}): {len(prep.study.trials)} trials so far; searching {len(prep.layers)} "
        f"blocks {prep.layers[0]}..{prep.layers[-1]}, budget {args.budget:.3f}; setup {prep.setup_seconds:.1f} s")
    done = run(prep.study, prep.objective, args.n_trials, progress=say)
    say(f"study {prep.name}: {done} complete trials; {best_so_far(prep.study, prep.objective.config.metric_names())}")
    if args.done:
        atomic_write_text(args.done, f"{prep.name}: {done} complete trials\n")


def prepare(args) -> Prepared:
    """Check the input, load the model, cache the dense dev outputs, open the study (see the module
    docstring for the order). Raises DataError / SpaceError / StudyError / CalibrationError."""
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = Budget(args.budget, args.seq_len, args.protect_last)
    calibration = _calibration(args.calibration)
    docs = load_documents(args.text, args.text_seed)  # a missing or empty text stops before the model loads

    if args.threads:
        torch.set_num_threads(args.threads)
    accuracy = None
    if args.quality != "kl":  # its lm-eval model loads the model; the KL objective shares that copy
        from .accuracy import DevAccuracy

        accuracy = DevAccuracy(args.model, args.dev_tasks, limit=args.dev_limit, device=args.device, dtype=args.dtype)
        model, tokenizer = accuracy.model, accuracy.lm.tokenizer
    else:
        from utrc import load_model

        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    shape = ModelShape.of(model)
    spec = ModelSpec.of(shape, args.model)
    layers = parse_layers(args.layers, shape.n_layer) if args.layers else default_layers(shape.n_layer)
    importance = args.importance or tuple(
        f"{m}/{s}" for s in sources_of(shape.architecture) for m in IMPORTANCE_METRICS)
    space = SearchSpace(
        layers=layers, importance=importance, prune_share=args.prune_share_range,
        per_layer_prune_share=args.per_layer_prune_share, residual_strategies=args.residual_strategies,
        hidden_strategies=args.hidden_strategies, keep_grid=args.keep_grid or None, max_target=args.max_budget,
    )
    space = fit_to_budget(shape, spec, space_from_calibration(space, calibration), budget)
    config = StudyConfig(budget=budget, space=space, n_trials=args.n_trials, seed=args.seed,
                         multi_objective=args.multi_objective, quality=args.quality,
                         dev_error_weight=args.dev_error_weight, stale_after=args.stale_after)
    validate(config, shape)
    check_reachable(shape, spec, space, budget)  # before the dev set is run

    if args.dev_unit == "window":
        dev_ids = windows(token_stream(docs, tokenizer), args.dev_sequences, args.dev_length, part="tail")
        dev_lengths = None
    else:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        dev_ids, dev_lengths = document_rows(docs, tokenizer, args.dev_sequences, args.dev_length, "tail", pad)
    dev = {"text": args.text, "seed": args.text_seed, "part": "tail", "unit": args.dev_unit,
           "n_sequences": args.dev_sequences, "seq_len": args.dev_length, "score_last": args.score_last,
           "hash": provenance.tensor_hash(dev_ids)}
    if accuracy is not None:
        dev.update(accuracy_tasks=accuracy.tasks, accuracy_limit=args.dev_limit, accuracy_split="dev")
    if calibration and calibration["model"]["name"] not in ("", args.model):
        print(f"warning: calibration {args.calibration} was made for {calibration['model']['name']}, not {args.model}",
              file=sys.stderr)
    reference = DenseReference(model, dev_ids.to(args.device), args.score_last, start_layer=min(layers),
                               batch_size=args.batch_size, lengths=dev_lengths)
    name = args.study_name or default_study_name(args.model, budget)
    study = create_or_resume(args.storage, name, config, shape, spec, calibration, dev)
    objective = Objective(config, reference, spec, accuracy)
    return Prepared(study, objective, name, layers, time.perf_counter() - start)


def _calibration(path: str | None) -> dict | None:
    if path is None:
        return None
    summary = load_summary(path)
    summary["_path"] = str(path)
    summary["_file_sha256"] = provenance.file_hash(path)
    return summary


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
