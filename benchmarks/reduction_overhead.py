"""Cost of one UTRC reduction step relative to the forward time of the layer it follows (CPU).

A Mamba-2-2.7B-shaped block stack (d_model 2560, d_inner 5120, 80 heads, d_state 128), truncated to
a few blocks with random weights, float32, batch 2 x 2048 tokens. For the reduction layer we time
(a) the block forward as transformers runs it and (b) the reduction step on its outputs: importance
scores, the A/B split, the cosine matching, the plan, and applying it to both branches, sizes and
positions. Target (issue 2): (b) under 5 % of (a).

    python benchmarks/reduction_overhead.py [--batch 2] [--seq-len 2048] [--repeats 5] [--keep 0.905]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply
from utrc.reduction import importance_scores, utrc_plan
from utrc.reduced import _mixer_with_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.905)
    ap.add_argument("--source", default="ssm_output", choices=["ssm_output", "scan_output", "mixer_output"])
    args = ap.parse_args()

    torch.manual_seed(0)
    config = Mamba2Config(  # state-spaces/mamba2-2.7b, truncated; a small vocabulary (the head is not timed)
        vocab_size=1024, hidden_size=2560, num_hidden_layers=args.layers, expand=2, head_dim=64,
        num_heads=80, state_size=128, n_groups=1, chunk_size=256, tie_word_embeddings=False,
    )
    model = Mamba2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    x = torch.randint(0, 1024, (args.batch, args.seq_len))
    block = model.backbone.layers[0]
    h = model.backbone.embeddings(x)
    lengths = torch.full((args.batch,), args.seq_len)
    protect = torch.ones(args.batch, dtype=torch.int64)

    def forward():
        with torch.no_grad():
            normed = block.norm(h)
            return _mixer_with_source(block.mixer, normed, args.source)

    def reduce(mix, source):
        with torch.no_grad():
            sizes = torch.ones(args.batch, args.seq_len)
            positions = torch.arange(args.seq_len).expand(args.batch, -1)
            plan = utrc_plan(importance_scores(source, "clip"), source, lengths, protect, args.keep)
            out = plan.residual(h.float(), sizes) + plan.hidden(mix, sizes)
            return out, plan.sizes(sizes), plan.positions(positions)

    forward_s, reduce_s = [], []
    mix, source = forward()  # warm-up
    reduce(mix, source)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        mix, source = forward()
        t1 = time.perf_counter()
        reduce(mix, source)
        t2 = time.perf_counter()
        forward_s.append(t1 - t0)
        reduce_s.append(t2 - t1)

    # end to end through the public API as a cross-check: the whole truncated stack, dense vs reduced
    spec = ModelSpec.of(ModelShape.of(model), name="mamba2-2.7b-shape")
    reduced = apply(model, Policy(method="utrc", model=spec, layers={0: LayerSpec(args.keep)}))
    t0 = time.perf_counter()
    reduced(x)
    t_reduced = time.perf_counter() - t0

    f, r = statistics.median(forward_s), statistics.median(reduce_s)
    result = {
        "benchmark": "reduction_overhead",
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "dtype": "float32",
        "shape": "mamba2-2.7b block (d_model 2560)",
        "batch": args.batch,
        "seq_len": args.seq_len,
        "keep": args.keep,
        "importance_source": args.source,
        "block_forward_s_median": round(f, 4),
        "reduction_step_s_median": round(r, 4),
        "reduction_fraction_of_block": round(r / f, 4),
        "stack_forward_with_one_reduction_s": round(t_reduced, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
