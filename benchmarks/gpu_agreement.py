"""mamba_ssm's model (the GPU path) against transformers' (the CPU reference) on the same weights,
recorded for docs/benchmarks.md. For each trained demo model, on demo text (4 x 300 tokens):

* float32, keep 1.0 (dense through `utrc.apply`) and the model's own forward: relative error
  ||a - ref|| / ||ref|| and max |a - ref| / max |ref| of the logits against transformers' PyTorch
  path on the CPU (Triton matmuls in IEEE float32, not TF32);
* float32, a reduced policy per method (blocks 2, 4, 5 at keep 0.7 / 0.8 / 0.9, right padding in
  two rows, a different protected suffix per row): kept positions, sizes and per-block token
  counts equal, and the logits' relative error;
* bf16: top-1 agreement with the float32 reference, overall and on positions the reference decides
  by a margin >= 0.1, for mamba_ssm's model and for transformers' model on the same GPU.

    python benchmarks/gpu_agreement.py --out agreement.json     (GPU with mamba_ssm + causal_conv1d)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_gpu_native import demo_ids, policy, pytorch_reference_path  # noqa: E402

from utrc import apply, load_model  # noqa: E402
from utrc.io import atomic_write_json, stamp  # noqa: E402


def errors(a: torch.Tensor, ref: torch.Tensor) -> dict:
    a, ref = a.float().cpu(), ref.float().cpu()
    return {"rel_err": float((a - ref).norm() / ref.norm()), "max_rel": float((a - ref).abs().max() / ref.abs().max())}


def top1(a: torch.Tensor, ref: torch.Tensor) -> dict:
    top2 = ref.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) >= 0.1
    same = a.float().cpu().argmax(-1) == ref.argmax(-1)
    return {"all": float(same.float().mean()), "decided": float(same[decided].float().mean()),
            "decided_share": float(decided.float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result = {"gpu": torch.cuda.get_device_name(), **stamp(), "models": {}}
    x = demo_ids()
    mask = torch.ones_like(x)
    mask[1, -37:] = 0
    mask[3, -5:] = 0
    protect = torch.tensor([1, 3, 8, 2])
    for arch in ("mamba2", "mamba"):
        name = f"demo:{arch}"
        native, _ = load_model(name, device="cuda", dtype=torch.float32, path="mamba_ssm")
        cpu, _ = load_model(name, device="cpu", dtype=torch.float32)
        row = {}
        dense = policy(native, "dense", {})
        with torch.no_grad(), pytorch_reference_path():
            ref = cpu(x).logits
            row["fp32_keep_1"] = errors(apply(native, dense)(x.cuda()).logits, ref)
            row["fp32_own_forward"] = errors(native(x.cuda()).logits, ref)
            for method in ("utrc", "evit", "tome"):
                p = policy(native, method, {2: 0.7, 4: 0.8, 5: 0.9}, prune_share=0.4)
                ours = apply(native, p)(x.cuda(), protect_last=protect.cuda(), attention_mask=mask.cuda())
                theirs = apply(cpu, p)(x, protect_last=protect, attention_mask=mask)
                real = theirs.positions >= 0
                row[f"fp32_{method}"] = {
                    "same_positions": bool(torch.equal(ours.positions.cpu(), theirs.positions)),
                    "same_sizes": bool(torch.equal(ours.sizes.cpu(), theirs.sizes)),
                    "same_tokens_per_layer": bool(torch.equal(ours.tokens_per_layer.cpu(), theirs.tokens_per_layer)),
                    **errors(ours.logits[real], theirs.logits[real]),
                }
            bf16, _ = load_model(name, device="cuda", dtype=torch.bfloat16, path="mamba_ssm")
            hf16, _ = load_model(name, device="cuda", dtype=torch.bfloat16, path="transformers")
            row["bf16_top1_mamba_ssm"] = top1(bf16(x.cuda()).logits, ref)
            row["bf16_top1_transformers"] = top1(hf16(x.cuda()).logits, ref)
        result["models"][name] = row
        print(name, row, flush=True)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
