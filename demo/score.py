"""A quick scorer for the demo tasks that computes what lm-eval computes, without lm-eval.

It exists for the training script (dev accuracy on the GPU while the model trains) and for fast
iteration on reduced models; the reported numbers come from lm-eval (`utrc.evaluation`). Each
request is `(context, continuation)` exactly as lm-eval builds it (target delimiter " "); the
model reads `context + continuation` minus its last token, and the continuation's log-likelihood
is read from the rows at positions `len(context)-1 ...` -- for a reduced model those rows are
protected (`protect_last = len(continuation)`) and found by their original position.

Metrics as in lm-eval: `acc` (argmax of summed log-likelihood), `acc_norm` (argmax of
log-likelihood divided by the choice's length in characters), for demo_lambada `acc` (greedy
match) and `perplexity` (exp of minus the mean log-likelihood).

    python -m demo.score --model demo:mamba2 --split dev \\
        --policy dense --policy evit:0.3 --policy tome:0.3 --policy utrc-paper:0.3
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from utrc.demo import TASKS, load_items
from utrc.names import PAPER_METRICS
from utrc.policy import ModelSpec
from utrc.shapes import ModelShape


def requests_of(task: str, row: dict) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval sends to the model for one row."""
    if task == "demo_lambada":
        return [(row["context"], " " + row["target"])]
    if task == "demo_winogrande":
        return [(ctx, " " + row["ending"]) for ctx in row["choices"]]
    return [(row["context"], " " + c) for c in row["choices"]]


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests, reduced=None, batch_size: int = 32, device=None):
    """[(log-likelihood, is_greedy)] per request; `reduced`: a `utrc.ReducedModel` or None."""
    device = device or next(model.parameters()).device
    enc = []
    for ctx, cont in requests:
        c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
        whole = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        enc.append((whole[: len(c)], whole[len(c) :]))
    order = sorted(range(len(enc)), key=lambda i: -(len(enc[i][0]) + len(enc[i][1])))
    results: list = [None] * len(enc)
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [(enc[i][0] + enc[i][1])[:-1] for i in idx]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        if reduced is None:
            logits = model(ids).logits.float()  # [B, n, V]
        else:
            protect = torch.tensor([len(enc[i][1]) for i in idx], device=device)
            out = reduced(ids, protect_last=protect, attention_mask=mask)
            logits = torch.full((len(seqs), n, out.logits.shape[-1]), float("nan"), device=device)  # [B, n, V]
            rows = out.positions >= 0
            b_idx = torch.arange(len(seqs), device=device)[:, None].expand_as(out.positions)
            logits[b_idx[rows], out.positions[rows]] = out.logits[rows]
        logp = torch.log_softmax(logits, dim=-1)
        for b, i in enumerate(idx):
            ctx, cont = enc[i]
            rows_ = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
            target = torch.tensor(cont, device=device)
            lp = logp[b, rows_]  # [len(cont), V]
            if bool(lp.isnan().any()):  # a scored row was removed: the policy broke protection
                raise RuntimeError(f"request {i}: a continuation row is missing from the reduced output")
            ll = float(lp.gather(1, target[:, None]).sum())
            greedy = bool((lp.argmax(-1) == target).all())
            results[i] = (ll, greedy)
    return results


def score_task(model, tokenizer, task: str, rows: list[dict], reduced=None, batch_size: int = 32) -> dict:
    """{"acc", "acc_norm"} (multiple choice) or {"acc", "perplexity"} (demo_lambada), in [0, 1]."""
    reqs, spans = [], []
    for row in rows:
        r = requests_of(task, row)
        spans.append((len(reqs), len(r)))
        reqs += r
    res = loglikelihoods(model, tokenizer, reqs, reduced, batch_size)
    if task == "demo_lambada":
        lls = [ll for ll, _ in res]
        return {"acc": sum(g for _, g in res) / len(res), "perplexity": math.exp(-sum(lls) / len(lls))}
    acc = acc_norm = 0
    for row, (s, k) in zip(rows, spans, strict=True):
        lls = [res[s + j][0] for j in range(k)]
        # lm-eval divides by the length of doc_to_choice's strings: the options' contexts for winogrande
        lens = [len(ctx) if task == "demo_winogrande" else len(cont) - 1 for ctx, cont in reqs[s : s + k]]
        norm = [ll / n for ll, n in zip(lls, lens, strict=True)]
        acc += int(max(range(k), key=lambda j: lls[j]) == row["label"])
        acc_norm += int(max(range(k), key=lambda j: norm[j]) == row["label"])
    return {"acc": acc / len(rows), "acc_norm": acc_norm / len(rows)}


def score_suite(model, tokenizer, split="dev", reduced=None, n_items=None, limit=None, batch_size=32) -> dict:
    """Every task's metrics plus "average": the mean of the six reported metrics (docs/method.md §4)."""
    out = {}
    for task in TASKS:
        rows = load_items(task, split, n_items)[:limit]
        out[task] = score_task(model, tokenizer, task, rows, reduced, batch_size)
    out["average"] = sum(out[t][PAPER_METRICS[t]] for t in TASKS) / len(TASKS)
    return out


def policy_for(model, spec: str, name: str = ""):
    """"dense", or "RUN:BUDGET" (utrc-paper | evit | tome at a nominal FLOPs reduction BUDGET, e.g.
    evit:0.3): the paper's layers with the keep ratio that run's cost meets the budget with
    (`utrc.budget.schedule_policy`)."""
    from utrc.budget import schedule_policy
    from utrc.names import SCHEDULE_RUNS
    from utrc.policy import Policy

    shape = ModelShape.of(model)
    if spec == "dense":
        return Policy.dense(ModelSpec.of(shape, name))
    run, _, budget = spec.partition(":")
    if run not in SCHEDULE_RUNS or not budget:
        raise ValueError(f"policy {spec!r}: expected 'dense' or RUN:BUDGET with RUN one of {'|'.join(SCHEDULE_RUNS)}")
    return schedule_policy(run, shape, float(budget), name=name)


def format_table(results: dict) -> str:
    head = "| policy | " + " | ".join(t.removeprefix("demo_") for t in TASKS) + " | average |"
    lines = [head, "|" + " --- |" * (len(TASKS) + 2)]
    for name, r in results.items():
        cells = [f"{100 * r[t][PAPER_METRICS[t]]:.1f}" for t in TASKS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * r['average']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from utrc import apply, load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo:mamba2")
    p.add_argument("--split", default="dev", choices=("dev", "test"))
    p.add_argument("--policy", action="append", help="dense | METHOD:TARGET (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="items per task")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: see demo/train.py --threads)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok = load_model(a.model, device=a.device, dtype=torch.float32)
    results = {}
    for spec in a.policy or ["dense"]:
        t = time.time()
        policy = policy_for(model, spec, a.model)
        reduced = None if spec == "dense" else apply(model, policy)
        results[spec] = score_suite(model, tok, a.split, reduced, limit=a.limit, batch_size=a.batch_size)
        keep = next(iter(policy.layers.values())).keep if policy.layers else 1.0
        print(f"{spec} (keep {keep}): average {100 * results[spec]['average']:.1f} ({time.time() - t:.0f} s)",
              flush=True)
    print(format_table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
