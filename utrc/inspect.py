"""`utrc inspect` and `utrc apply` (also `python -m utrc.inspect`): what a policy file does, checked.

    utrc inspect POLICY                          # validate the file (docs/method.md §3) and show it
    utrc inspect POLICY --model REF              # ... check that it fits the model; estimate its FLOPs
    utrc apply POLICY --model REF --text TEXT    # ... and run it on TEXT beside the dense model

Without --model, FLOPs are estimated when the policy names a paper checkpoint (`utrc.shapes.PAPER_SHAPES`,
no download needed). The estimate is the analytic prefill cost of one row of --seq-len tokens
(docs/method.md §5). `apply` prints the tokens each block processed, the FLOPs reduction realized on
the text, and whether the next-token prediction agrees with the dense model's.

A file that is not a valid policy, a policy made for another model, a model that cannot be loaded or a
device this machine does not have exits with one line `error: ...` (status 2) naming what is wrong.
"""

from __future__ import annotations

import argparse
import sys

from .policy import Policy


def build_parser(command: str = "inspect") -> argparse.ArgumentParser:
    apply = command == "apply"
    ap = argparse.ArgumentParser(
        prog=f"utrc {command}",
        description=__doc__.split("\n\n")[0] if not apply else "Run a policy file on a text with a model, "
        "beside the dense model: tokens per block, realized FLOPs reduction, next-token agreement.",
    )
    ap.add_argument("policy", help="a utrc-policy/1 file")
    ap.add_argument("--model", required=apply, help="model reference: demo:mamba2, a local directory or a hub id")
    ap.add_argument("--seq-len", type=int, default=2048, help="tokens of the FLOPs estimate (default 2048)")
    ap.add_argument("--protect-last", type=int, default=1, help="protected last tokens (default 1)")
    ap.add_argument("--device", default="cpu", help="where to load the model (default cpu)")
    ap.add_argument("--dtype", default=None, help="default: float32 on the CPU, bfloat16 on a GPU")
    ap.add_argument("--text", required=apply, help="run the policy on this text" + ("" if apply else " (as `apply`)"))
    return ap


def main(argv: list[str] | None = None, command: str = "inspect") -> None:
    ap = build_parser(command)
    args = ap.parse_args(argv)
    if args.text is not None and not args.model:
        ap.error("--text needs --model (the model to run the policy with)")
    try:
        _run(args)
    except (ValueError, OSError) as err:  # PolicyError, DeviceError, and load_model's documented errors
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(args) -> None:
    from .flops import estimate_flops
    from .shapes import PAPER_SHAPES, ModelShape

    policy = Policy.load(args.policy)
    _show(args.policy, policy)
    model = tokenizer = None
    if args.model:
        from .loading import load_model

        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
        shape, source = ModelShape.of(model), args.model
    elif policy.model.name in PAPER_SHAPES:
        shape, source = PAPER_SHAPES[policy.model.name], f"{policy.model.name} (published shape)"
    else:
        print(f"not checked against a model: give --model REF (e.g. --model {policy.model.name}) to check that "
              "it fits and to estimate its FLOPs")
        return
    policy.check_fits(shape)  # PolicyError naming the mismatch
    est = estimate_flops(shape, policy, args.seq_len, args.protect_last)
    print(f"fits {source}: {shape.architecture}, {shape.n_layer} blocks, d_model {shape.d_model}")
    print(f"estimated prefill FLOPs at {est['seq_len']} tokens (protect_last {est['protect_last']}): dense "
          f"{est['dense']:.4g}, reduced {est['reduced']:.4g}, reduction {est['reduction']:.1%} "
          f"(token-fraction proxy {est['token_fraction_proxy']:.1%})")
    print(f"tokens per block: {est['tokens_per_layer']}")
    if args.text is not None:
        _apply(model, tokenizer, policy, args.text)


def _show(path: str, policy: Policy) -> None:
    m = policy.model
    print(f"{path}: valid utrc-policy/1, method {policy.method}, made for {m.name or '(unnamed)'} "
          f"({m.architecture}, {m.n_layer} blocks, d_model {m.d_model})")
    if policy.method == "dense":
        print("reduces nothing")
        return
    print(f"importance {policy.importance} on {policy.importance_source}; hidden {policy.hidden_strategy}, "
          f"residual {policy.residual_strategy}; prune share {policy.prune_share}")
    for block, (keep, share) in policy.reduction_layers().items():
        print(f"  after block {block:3d}: keep {keep:g}, prune share {share:g}")
    stored = policy.estimates or {}
    if "reduction" in stored:
        print(f"the file's own estimate: {stored['reduction']:.1%} FLOPs reduction at "
              f"{stored.get('seq_len', '?')} tokens")
    prov = policy.provenance or {}
    if prov.get("study"):
        print(f"from study {prov['study']} (budget {prov.get('budget')}, trial {prov.get('trial', '?')})")


def _apply(model, tokenizer, policy: Policy, text: str) -> None:
    """Run `policy` and the dense model on `text`; print what the reduced forward did."""
    import torch

    from .flops import realized_flops
    from .reduced import apply
    from .shapes import ModelShape

    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)  # [1, N]
    if ids.shape[1] < 2:
        raise ValueError(f"--text has {ids.shape[1]} token(s); give a longer text")
    reduced = apply(model, policy)
    with torch.no_grad():
        out = reduced(ids, protect_last=1)
        dense_logits = model(input_ids=ids).logits[:, -1].float()  # [1, V]
    counts = out.tokens_per_layer[:, 0].tolist()  # [n_layer]
    (dense, cost), = realized_flops(ModelShape.of(model), policy, out.tokens_per_layer.tolist(), [1],
                                    out.lengths.tolist())
    last = out.logits[:, int(out.lengths[0]) - 1].float()  # [1, V] the row of the last token (protected)
    kl = torch.nn.functional.kl_div(last.log_softmax(-1), dense_logits.log_softmax(-1), log_target=True,
                                    reduction="batchmean")
    dense_top, reduced_top = int(dense_logits.argmax()), int(last.argmax())
    print(f"ran on {ids.shape[1]} tokens: tokens per block {counts}, {int(out.lengths[0])} rows out")
    print(f"realized prefill FLOPs reduction on this text: {1 - cost / dense:.1%}")
    print(f"next token: dense {tokenizer.decode([dense_top])!r}, reduced {tokenizer.decode([reduced_top])!r} "
          f"({'agree' if dense_top == reduced_top else 'differ'}); KL(dense || reduced) {float(kl):.4f} nats")


if __name__ == "__main__":
    main()
