"""Train a demo model on the generator's text (split "train") and save it in Hugging Face format.

    python -m demo.train --arch mamba2 --out utrc/demo/models/mamba2 --minutes 4 --device cuda
    python -m demo.train --arch mamba  --out utrc/demo/models/mamba  --steps 3000

Each training row is one episode (`items.training_episode`: a 200..1000-word document and up to 12
answered queries of all six formats), so every row starts from a fresh state, as an evaluation
request does. Rows of similar length are batched together (a pool of batches is sorted by
length) and padded on the right; padding is not scored. Plain next-token cross-entropy on every
token, AdamW, linear warm-up then cosine decay to 10 %.

Reproducible: the model's initialisation (`--seed`) and the data stream (`--seed`, `--workers`:
worker w draws from the string seed "utrc-demo/train/SEED/w") are seeded. `--minutes M` times
the first steps, fixes the number of steps that fit in M minutes and logs it ("reproduce with
--steps N"); the learning-rate schedule depends only on that number.

Writes OUT/config.json, OUT/model.safetensors, OUT/tokenizer.json, OUT/tokenizer_config.json and
OUT/train.log (command, versions, configuration, loss curve, dev accuracies).
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

from .items import training_episode_parts
from .tokenizer import build_tokenizer, vocabulary

TIMING_STEPS = (20, 60)  # steps [20, 60) time the run when --minutes is given


# Parameters that weight decay would pull towards 0 for no reason, as mamba_ssm exempts them
# (`_no_weight_decay`): the state matrix (Mamba-1's A_log is 2-D, so a shape rule would decay it), the
# skip D, the step-size bias; also every bias, norm weight and the embedding.
NO_DECAY = ("A_log", "D", "dt_bias", "bias")


def decay_groups(model) -> tuple[list, list]:
    """(parameters with weight decay, parameters without)."""
    decay, other = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or "embeddings" in name or name.rsplit(".", 1)[-1] in NO_DECAY
        (other if exempt else decay).append(p)
    return decay, other


def model_config(arch: str, vocab_size: int, hidden_size: int | None = None, state_size: int | None = None):
    """The demo models' shapes, 8 blocks each (the paper's layers scale to blocks 2..5), small
    enough to evaluate the demo suite on a CPU in about a minute: Mamba-2 d_model 128, d_state 64;
    Mamba-1 d_model 64, d_state 8 (its scan materialises every (token, channel, state) and is
    several times slower per token). `hidden_size` / `state_size` override the defaults."""
    ids = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 2, "tie_word_embeddings": True}
    if arch == "mamba2":
        from transformers import Mamba2Config

        d = hidden_size or 128
        return Mamba2Config(
            vocab_size=vocab_size, hidden_size=d, num_hidden_layers=8, expand=2, head_dim=32, num_heads=2 * d // 32,
            state_size=state_size or 64, n_groups=1, conv_kernel=4, chunk_size=32, **ids,
        )  # fmt: skip
    if arch == "mamba":
        from transformers import MambaConfig

        d = hidden_size or 64
        return MambaConfig(
            vocab_size=vocab_size, hidden_size=d, num_hidden_layers=8, expand=2, state_size=state_size or 8,
            conv_kernel=4, time_step_rank=max(4, d // 16), use_mambapy=True, **ids,
        )  # fmt: skip
    raise ValueError(f"--arch: expected 'mamba2' or 'mamba', got {arch!r}")


class EpisodeBatches(torch.utils.data.IterableDataset):
    """Endless batches {input_ids [B, N], weights [B, N]} of training episodes.

    `weights[b, t]` weighs the loss of predicting token t: `doc_weight` inside the document (its
    facts are unpredictable, its filler is noise), 1 in the answered queries, 0 on padding."""

    def __init__(self, seed, batch_size, short, doc_weight, queries=(8, 16), pool_batches=16):
        self.seed, self.batch_size, self.short, self.doc_weight = seed, batch_size, short, doc_weight
        self.queries = queries
        self.pool_batches = pool_batches
        self.ids = vocabulary()

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"utrc-demo/train/{self.seed}/{info.id if info else 0}")
        while True:
            pool = []
            for _ in range(self.pool_batches * self.batch_size):
                doc, queries = training_episode_parts(rng, "train", rng.randint(*self.queries), self.short)
                pool.append(([self.ids[w] for w in doc.split()], [self.ids[w] for w in " ".join(queries).split()]))
            pool.sort(key=lambda p: len(p[0]) + len(p[1]))
            batches = [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            rng.shuffle(batches)
            for rows in batches:
                n = -(-max(len(d) + len(q) for d, q in rows) // 32) * 32  # a multiple of the chunk size
                ids = torch.zeros(len(rows), n, dtype=torch.long)  # <pad> is 0
                weights = torch.zeros(len(rows), n)
                for b, (d, q) in enumerate(rows):
                    ids[b, : len(d) + len(q)] = torch.tensor(d + q)
                    weights[b, : len(d)] = self.doc_weight
                    weights[b, len(d) : len(d) + len(q)] = 1.0
                yield {"input_ids": ids, "weights": weights}


def weighted_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting ids[:, t] from logits[:, t-1], weighted by weights[:, t]."""
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none"
    )  # [B * (N-1)]
    w = weights[:, 1:].flatten()
    return (ce * w).sum() / w.sum().clamp(min=1e-6)


def lr_at(step: int, total: int | None, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _summary(res: dict) -> str:
    from utrc.names import DEMO_TASKS, PAPER_METRICS

    cells = [f"{t.removeprefix('demo_')} {100 * res[t][PAPER_METRICS[t]]:.1f}" for t in DEMO_TASKS]
    return ", ".join(cells) + f"; average {100 * res['average']:.1f}"


def save(model, tokenizer, out: Path) -> None:
    """Hugging Face format, float32 on the CPU, the model left where it was."""
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train a demo model (see module docstring).")
    p.add_argument("--arch", required=True, choices=("mamba2", "mamba"))
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--minutes", type=float, default=None, help="fix --steps to fit this training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden-size", type=int, default=None, help="d_model (default: 128 Mamba-2, 64 Mamba-1)")
    p.add_argument("--state-size", type=int, default=None, help="d_state (default: 64 Mamba-2, 8 Mamba-1)")
    p.add_argument("--init", default=None, help="start from this model directory's weights (a second stage)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--short", type=float, default=0.9, help="share of episodes with 40..200-word documents")
    p.add_argument("--queries", default="8,16", help="MIN,MAX answered queries per episode")
    p.add_argument("--doc-weight", type=float, default=0.2, help="loss weight of document tokens (queries: 1)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads; 1 by default: on a shared 2-core machine two OpenMP threads stall each other "
             "(10x slower steps)",
    )  # fmt: skip
    p.add_argument("--eval-items", type=int, default=150, help="dev items per task scored at the end")
    p.add_argument("--eval-every", type=int, default=250, help="score --eval-limit dev items per task every N steps")
    p.add_argument("--eval-limit", type=int, default=30)
    a = p.parse_args(argv)
    if (a.steps is None) == (a.minutes is None):
        p.error("give exactly one of --steps and --minutes")
    if a.steps is not None and a.steps <= a.warmup:
        p.error(f"--steps must exceed the {a.warmup} warm-up steps (--warmup)")

    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    from .score import score_suite

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train.log", "w", buffering=1)

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")

    import transformers

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    log(f"command: python -m demo.train {' '.join(argv if argv is not None else sys.argv[1:])}")
    log(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
    )
    torch.manual_seed(a.seed)
    tokenizer = build_tokenizer()
    config = model_config(a.arch, len(tokenizer), a.hidden_size, a.state_size)
    cls = Mamba2ForCausalLM if a.arch == "mamba2" else MambaForCausalLM
    if a.init:
        model = cls.from_pretrained(a.init, dtype=torch.float32).to(device)
        keys = ("model_type", "hidden_size", "num_hidden_layers", "state_size", "vocab_size", "expand")
        if any(getattr(model.config, k) != getattr(config, k) for k in keys):
            p.error(f"--init {a.init}: its configuration differs from the {a.arch} demo configuration")
        log(f"initialised from {a.init}")
    else:
        model = cls(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"arch {a.arch}: {n_params} parameters, vocabulary {len(tokenizer)} words")
    log(f"config: {config.to_json_string(use_diff=True).strip()}")
    log(f"batch {a.batch_size} episodes, lr {a.lr}, warm-up {a.warmup}, seed {a.seed}, workers {a.workers}, "
        f"threads {a.threads}, short {a.short}, doc weight {a.doc_weight}, queries {a.queries}")  # fmt: skip

    decay, other = decay_groups(model)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        EpisodeBatches(a.seed, a.batch_size, a.short, a.doc_weight, tuple(map(int, a.queries.split(",")))),
        batch_size=None, num_workers=a.workers,
        persistent_workers=a.workers > 0, prefetch_factor=8 if a.workers > 0 else None,
    )  # fmt: skip
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    total = a.steps
    t0 = time.time()
    t_timing = None
    loss_sum, tokens, step = 0.0, 0, 0
    # The mixers stay in eval mode while training: they have no dropout or batch norm, and in train
    # mode transformers switches to mamba_ssm's fused mamba_inner_fn / split-conv1d kernels, which
    # need causal-conv1d's CUDA extension (not built on the GPU machine). In eval mode the kernels
    # that mamba_ssm alone provides (selective scan, SSD chunk scan) run, with autograd.
    model.eval()
    for batch in loader:
        if total is not None and step >= total:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, a.lr, a.warmup)
        ids, weights = batch["input_ids"].to(device, non_blocking=True), batch["weights"].to(device, non_blocking=True)
        loss = weighted_loss(model(input_ids=ids).logits, ids, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_sum = loss_sum + loss.detach()  # no host sync per step
        tokens += int(batch["weights"].gt(0).sum())
        step += 1
        if a.minutes is not None and total is None:
            if step == TIMING_STEPS[0]:
                t_timing = time.time()
            elif step == TIMING_STEPS[1]:
                per_step = (time.time() - t_timing) / (TIMING_STEPS[1] - TIMING_STEPS[0])
                total = max(a.warmup + 100, int(a.minutes * 60 / per_step) // 100 * 100)
                log(f"{per_step * 1000:.0f} ms/step: total steps fixed at {total} (reproduce with --steps {total})")
        if step % 100 == 0:
            log(f"step {step}: loss {float(loss_sum) / 100:.4f}, lr {lr_at(step - 1, total, a.lr, a.warmup):.2e}, "
                f"{tokens} tokens, {time.time() - t0:.0f} s")  # fmt: skip
            loss_sum = 0.0
        if total is not None and a.eval_every and step % a.eval_every == 0 and step < total:
            res = score_suite(model, tokenizer, "dev", limit=a.eval_limit, batch_size=64)
            log(f"step {step}: dev ({a.eval_limit} items per task) " + _summary(res))
            save(model, tokenizer, out)  # a run cut short keeps its last evaluated weights
    log(f"trained {step} steps, {tokens} tokens in {time.time() - t0:.0f} s")

    model.eval()
    t1 = time.time()
    res = score_suite(model, tokenizer, "dev", limit=a.eval_items, batch_size=64)
    log(f"dev accuracies (up to {a.eval_items} items per task, {time.time() - t1:.0f} s): " + _summary(res))
    save(model, tokenizer, out)
    log(f"saved to {out}")
    log_file.close()


if __name__ == "__main__":
    main()
