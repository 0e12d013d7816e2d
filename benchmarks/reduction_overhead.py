"""Cost of one UTRC reduction step relative to the forward time of the block it follows.

A Mamba-2-2.7B- or Mamba-2.8B-shaped model truncated to a few blocks, random weights: on a GPU
mamba_ssm's own model in bf16 (the GPU path), on the CPU transformers' in float32. For the
reduction block we time, each the median of `--repeats` (CUDA events on a GPU):
  (a) the block as it runs when nothing is reduced (`block`);
  (b) the block with its importance source read (`split_block`), the reduction block's forward;
  (c) the reduction step on its outputs: scores, the A/B split, the cosine matching, the plan, and
      applying it to both branches, the sizes and the positions.
On a GPU, `--ops` adds torch.profiler's per-operator GPU time of (c).

    python benchmarks/reduction_overhead.py --shape state-spaces/mamba2-2.7b --batch 16 --out x.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply
from utrc.io import atomic_write_json, stamp
from utrc.profile import median_time, random_model
from utrc.reduction import RowCounts
from utrc.shapes import PAPER_SHAPES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="state-spaces/mamba2-2.7b", choices=sorted(PAPER_SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 16 on a GPU, 2 on the CPU")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--keep", type=float, default=0.905)
    ap.add_argument("--method", default="utrc", choices=["utrc", "evit", "tome"])
    ap.add_argument("--source", default="ssm_output", choices=["ssm_output", "scan_output", "mixer_output"])
    ap.add_argument("--ops", action="store_true", help="per-operator GPU time of the reduction step")
    ap.add_argument("--out")
    args = ap.parse_args()

    device = torch.device(args.device)
    batch = args.batch or (16 if device.type == "cuda" else 2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = replace(PAPER_SHAPES[args.shape], n_layer=args.layers, vocab_size=1024)  # the head is not timed
    model = random_model(shape, args.device, dtype)
    layer = args.layers - 1
    policy = Policy(args.method, ModelSpec.of(ModelShape.of(model)), {layer: LayerSpec(args.keep)},
                    importance_source=args.source)
    reduced = apply(model, policy)
    x = torch.randint(0, shape.vocab_size, (batch, args.seq_len), device=device)
    with torch.inference_mode():
        state = reduced.run(reduced.start(x), 0, layer)  # the stream entering the reduction block
        blocks, h, r = reduced.blocks, state.hidden, state.residual
        counts = RowCounts.of(state.host_lengths, state.host_protect, args.keep)
        mix, res, found = blocks.split_block(layer, h, r, (args.source,))

        def step():
            plan = reduced._plan(found[args.source], state, args.keep, policy.prune_share, counts)
            return plan.hidden(mix, state.sizes), plan.residual(res, state.sizes), plan.sizes(state.sizes), \
                plan.positions(state.positions)

        result = {
            "shape": args.shape, "path": reduced.path, "device": str(device), "dtype": str(dtype), "batch": batch,
            "seq_len": args.seq_len, "method": args.method, "source": args.source, "keep": args.keep,
            "block_s": median_time(lambda: blocks.block(layer, h, r), device, args.repeats),
            "block_with_source_s": median_time(lambda: blocks.split_block(layer, h, r, (args.source,)), device,
                                               args.repeats),
            "reduction_step_s": median_time(step, device, args.repeats),
            **stamp(),
        }
        result["reduction_step_over_block"] = result["reduction_step_s"] / result["block_s"]
        if args.ops and device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                step()
                torch.cuda.synchronize()
            ops = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
            result["kernels"] = sum(e.count for e in prof.key_averages() if e.device_time_total > 0 and
                                    not e.key.startswith("aten::"))
            result["ops"] = [{"op": e.key[:100], "gpu_ms": e.device_time_total / 1000, "calls": e.count}
                             for e in ops[:30]]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
