"""Profile dense and reduced models: peak memory, prefill and generation throughput (docs/method.md §6).

Every ratio is against `dense`, the model's own forward pass, measured in the same process on the
same inputs: on a GPU that is mamba_ssm's `MambaLMHeadModel` with causal_conv1d (its fused paths,
logits in the model's dtype, `generate(cg=True)` for decoding) -- the fastest dense a user has. On
a GPU, transformers' model with the same weights is measured beside it (`transformers-dense`), for
reference only. Policies run `utrc.apply` on the same mamba_ssm model; their generation is
mamba_ssm's own CUDA-graph decoding after a reduced prefill (`utrc.native.generate`).

On a GPU: `torch.cuda.max_memory_allocated` around one prefill (minus what was held before), CUDA
events, warm-up, medians; `--trace` adds each prefill's GPU time by kernel. Without a GPU: wall
time on the CPU and resident-memory growth, labelled as such, with CPU-sized defaults.

    python -m utrc.profile --shape state-spaces/mamba2-2.7b --policy utrc-paper:0.1 --policy evit:0.3 \\
        --out profile.json
    python -m utrc.profile --model demo:mamba2 --policy results/x/policies/searched-0.3.json

A `--policy` is a policy file, or RUN:BUDGET with RUN in utrc-paper | evit | tome: the paper's
layers with the one keep ratio that meets BUDGET nominal FLOPs reduction (docs/method.md §2).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from .budget import SCHEDULE_RUNS, schedule_policy
from .flops import estimate_flops
from .io import atomic_write_json, now, versions
from .loading import load_model
from .policy import ModelSpec, Policy
from .reduced import apply
from .shapes import PAPER_SHAPES, ModelShape

FORMAT = "utrc-profile/1"
GPU_DEFAULTS = dict(seq_len=2048, memory_batch=96, prefill_batch=16, generate_batch=16, new_tokens=100, repeats=5,
                    measure="memory,prefill,generate")
CPU_DEFAULTS = dict(seq_len=512, memory_batch=4, prefill_batch=4, generate_batch=2, new_tokens=8, repeats=3,
                    measure="prefill,generate")
GPU_BASELINE = "mamba_ssm MambaLMHeadModel, dense (fused paths with causal_conv1d, logits in the model dtype)"
CPU_BASELINE = "the transformers model, dense, on the CPU"


def random_model(shape: ModelShape, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                 native: bool | None = None):
    """A model of `shape` with random weights, built on `device`: mamba_ssm's `MambaLMHeadModel`
    (as `state-spaces/*` are built: RMSNorm, residual in float32, fused add+norm) when `native`
    (default: on a CUDA device), else a transformers model."""
    native = torch.device(device).type == "cuda" if native is None else native
    torch.manual_seed(seed)
    if native:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        layer = {"layer": "Mamba2"} if shape.architecture == "mamba2" else {}
        config = MambaConfig(d_model=shape.d_model, n_layer=shape.n_layer, vocab_size=shape.vocab_size,
                             ssm_cfg={**layer, "d_state": shape.d_state}, rms_norm=True, residual_in_fp32=True,
                             fused_add_norm=True, pad_vocab_size_multiple=8)
        return MambaLMHeadModel(config, device=device, dtype=dtype).eval()
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    # initializer_range 0.02 as in mamba_ssm: transformers' Mamba-2 default (0.1) blows up activations
    common = dict(initializer_range=0.02, vocab_size=shape.vocab_size, hidden_size=shape.d_model,
                  num_hidden_layers=shape.n_layer, state_size=shape.d_state, conv_kernel=shape.d_conv,
                  expand=shape.d_inner // shape.d_model, tie_word_embeddings=True)
    if shape.architecture == "mamba2":
        config = Mamba2Config(num_heads=shape.nheads, head_dim=shape.headdim, n_groups=shape.ngroups,
                              chunk_size=shape.chunk_size, **common)
        cls = Mamba2ForCausalLM
    else:
        config = MambaConfig(time_step_rank=shape.dt_rank, **common)
        cls = MambaForCausalLM
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def transformers_twin(native_model):
    """transformers' model sharing the weights of a mamba_ssm model (same device; a float32 `D` is
    rounded to the model dtype, as transformers stores it)."""
    import dataclasses

    from .mamba_ssm_format import mamba_ssm_to_transformers

    shape = ModelShape.of(native_model)
    config = dataclasses.asdict(native_model.config)
    return mamba_ssm_to_transformers(config, dict(native_model.state_dict()), shape.architecture, "auto", {},
                                     "the profiled model").eval()


def budget_policy(spec: str, shape: ModelShape, name: str = "", seq_len: int = 2048) -> Policy:
    """'utrc-paper:0.3' / 'evit:0.3' / 'tome:0.3' -> the run at the paper's layers meeting the budget
    (`utrc.budget.schedule_policy`)."""
    run, _, budget = spec.partition(":")
    if run not in SCHEDULE_RUNS or not budget:
        runs = " | ".join(SCHEDULE_RUNS)
        raise ValueError(f"policy {spec!r}: expected a policy file or RUN:BUDGET with RUN in {runs}")
    return schedule_policy(run, shape, float(budget), name=name, seq_len=seq_len)


# --- measuring -----------------------------------------------------------------------------------


def median_time(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()`: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_memory(fn, device: torch.device) -> float:
    """GiB allocated at the peak of one call, above what was held before it (GPU), or the growth of
    the process's resident set (CPU: a coarse upper bound, labelled as such in the result)."""
    if device.type == "cuda":
        fn()  # warm-up: kernels compiled, allocator settled
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        torch.cuda.empty_cache()
        return peak / 2**30
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    out = fn()
    peak = proc.memory_info().rss - before
    del out
    return peak / 2**30


def _kernel_trace(fn, top: int = 20) -> dict:
    """GPU time of one call of `fn` by kernel (torch.profiler): where a prefill's time goes.
    `busy_fraction` = summed kernel time / wall time; below 1, the GPU waited for the host."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    per_kernel: dict[str, list] = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel.setdefault(evt.name, [0.0, 0])
            entry[0] += evt.time_range.elapsed_us() / 1e6
            entry[1] += 1
    busy = sum(v[0] for v in per_kernel.values())
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])
    calls = sum(v[1] for v in per_kernel.values())
    return {"wall_s": wall, "kernel_s": busy, "busy_fraction": busy / wall, "kernels": calls,
            "top": [{"kernel": k[:160], "s": v[0], "calls": v[1]} for k, v in ranked[:top]]}


def _runners(model, policy: Policy | None):
    """(prefill(x, last_only) -> logits, generate(x, new_tokens) -> tokens) for the model's own dense
    forward (policy None) or a policy. mamba_ssm models decode with `generate(cg=True)`."""
    native = hasattr(model.config, "ssm_cfg")
    if policy is None and native:
        def prefill(x, last=False):
            return model(x, num_last_tokens=1 if last else 0).logits

        def generate(x, new_tokens):
            return model.generate(x, max_length=x.shape[1] + new_tokens, top_k=1, cg=True)

        return prefill, generate
    if policy is None:
        def prefill(x, last=False):
            return model(x, logits_to_keep=1 if last else 0).logits

        reduced = apply(model, Policy.dense(ModelSpec.of(ModelShape.of(model))))
    else:
        reduced = apply(model, policy)

        def prefill(x, last=False):
            return reduced(x, protect_last=1, last_logits_only=last).logits

    if native:
        from .native import decoder
        from .native import generate as native_generate

        graphs = decoder(reduced)  # keeps its captured CUDA graphs between calls

        def generate(x, new_tokens):
            return native_generate(graphs, x, x.shape[1] + new_tokens)
    else:
        from .generation import greedy_generate

        def generate(x, new_tokens):
            return greedy_generate(reduced, x, new_tokens)

    return prefill, generate


def profile(
    model,
    policies: dict[str, Policy],
    *,
    seq_len: int,
    memory_batch: int,
    prefill_batch: int,
    generate_batch: int,
    new_tokens: int,
    repeats: int,
    warmup: int = 2,
    measure: tuple[str, ...] = ("memory", "prefill", "generate"),
    reference=None,
    trace: bool = False,
    checkpoint=None,
    say=lambda msg: print(msg, file=sys.stderr, flush=True),
) -> dict:
    """Measure dense and each policy on the same inputs -> a JSON-ready dict (format utrc-profile/1).
    `reference`: another model with the same weights measured as `transformers-dense` (prefill and
    memory, never a baseline). `checkpoint(doc)` is called with the rows so far after each model,
    so a run cut short keeps them. `say` gets one progress line per measurement."""
    device = model.lm_head.weight.device
    shape = ModelShape.of(model)
    g = torch.Generator(device="cpu").manual_seed(0)

    def batch(n):
        return torch.randint(0, shape.vocab_size, (n, seq_len), generator=g).to(device)

    x_mem = batch(memory_batch) if "memory" in measure else None
    x_pre, x_gen = batch(prefill_batch), batch(generate_batch)  # [B, seq_len] each
    doc = {
        "format": FORMAT,
        "date": now(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads): wall time and RSS growth, not GPU figures",
        "baseline": GPU_BASELINE if device.type == "cuda" else CPU_BASELINE,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "shape": dict(vars(shape)),
        "protocol": dict(seq_len=seq_len, memory_batch=memory_batch, prefill_batch=prefill_batch,
                         generate_batch=generate_batch, new_tokens=new_tokens, repeats=repeats, warmup=warmup,
                         measure=list(measure), decode_cuda_graphs=device.type == "cuda"),
        "complete": False,
        "results": {},
    }
    runs = [("dense", model, None)]
    if reference is not None:
        runs.append(("transformers-dense", reference, None))
    runs += [(name, model, policy) for name, policy in policies.items()]
    for name, m, policy in runs:
        row: dict = {}
        if policy is not None:
            est = estimate_flops(shape, policy, seq_len=seq_len, protect_last=1)
            row.update(policy=policy.to_dict(), nominal_flops_reduction=est["reduction"],
                       ideal_speedup=est["dense"] / est["reduced"], token_fraction_proxy=est["token_fraction_proxy"])
        with torch.inference_mode():
            _measure(row, name, *_runners(m, policy), x_mem, x_pre, x_gen, new_tokens, measure, device, repeats, warmup,
                     trace, say)
        doc["results"][name] = row
        _ratios(doc["results"])
        if checkpoint is not None:
            checkpoint(doc)
    doc["versions"] = versions()
    doc["mamba_ssm_kernels"] = hasattr(model.config, "ssm_cfg")
    doc["complete"] = True
    return doc


def _measure(row, name, prefill, generate, x_mem, x_pre, x_gen, new_tokens, measure, device, repeats, warmup, trace,
             say) -> None:
    """One model's (or policy's) measurements, added to `row`, one progress line each."""
    if "memory" in measure:
        for variant, last in (("all_logits", False), ("last_logits", True)):
            key = f"peak_memory_gib_{variant}"
            row[key] = _guarded(lambda last=last: _peak_memory(lambda: prefill(x_mem, last), device), row,
                                f"memory {variant} at batch {x_mem.shape[0]}")
            say(f"[utrc.profile] {name}: peak memory ({variant}) {_fmt(row[key], 'GiB')}")
    if "prefill" in measure:
        row["prefill_s"] = median_time(lambda: prefill(x_pre), device, repeats, warmup)
        row["prefill_tokens_per_s"] = x_pre.numel() / row["prefill_s"]
        say(f"[utrc.profile] {name}: prefill {row['prefill_s']:.4g} s")
    if "generate" in measure and name != "transformers-dense":
        row["generate_s"] = median_time(lambda: generate(x_gen, new_tokens), device, max(1, repeats // 2), 1)
        row["generate_tokens_per_s"] = x_gen.shape[0] * new_tokens / row["generate_s"]
        say(f"[utrc.profile] {name}: generate {row['generate_s']:.4g} s")
    if trace and device.type == "cuda" and "prefill" in measure:
        row["prefill_kernel_trace"] = _kernel_trace(lambda: prefill(x_pre))


def _guarded(measure, row: dict, what: str):
    try:
        return measure()
    except torch.OutOfMemoryError:
        row.setdefault("notes", []).append(f"out of memory: {what}")
        torch.cuda.empty_cache()
        return None


def _fmt(value, unit: str) -> str:
    return "out of memory" if value is None else f"{value:.4g} {unit}"


def _ratios(rows: dict) -> None:
    """Every row's speed and memory relative to `dense` (the baseline)."""
    dense = rows["dense"]
    for name, row in rows.items():
        if name == "dense":
            continue
        if "prefill_s" in row:
            row["prefill_speedup"] = dense["prefill_s"] / row["prefill_s"]
            if "ideal_speedup" in row:
                row["prefill_speedup_over_ideal"] = row["prefill_speedup"] / row["ideal_speedup"]
        if "generate_s" in row and "generate_s" in dense:
            row["generate_speedup"] = dense["generate_s"] / row["generate_s"]
        for variant in ("all_logits", "last_logits"):
            d, r = dense.get(f"peak_memory_gib_{variant}"), row.get(f"peak_memory_gib_{variant}")
            if d and r is not None:
                row[f"peak_memory_reduction_{variant}"] = 1 - r / d


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m utrc.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=sorted(PAPER_SHAPES), help="random weights of a paper checkpoint's shape")
    src.add_argument("--model", help="a model reference for utrc.load_model")
    ap.add_argument("--policy", action="append", default=[], help="policy file or RUN:BUDGET (repeatable)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    for key, kind in (("seq_len", int), ("memory_batch", int), ("prefill_batch", int), ("generate_batch", int),
                      ("new_tokens", int), ("repeats", int), ("measure", str)):
        ap.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                        help=f"default {GPU_DEFAULTS[key]} on a GPU, {CPU_DEFAULTS[key]} on the CPU")
    ap.add_argument("--no-transformers-reference", action="store_true",
                    help="on a GPU, skip measuring transformers' model beside mamba_ssm's")
    ap.add_argument("--trace", action="store_true", help="add each prefill's GPU time by kernel (torch.profiler)")
    ap.add_argument("--out", help="write the JSON result here (default: stdout); rewritten after each model")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this machine has no CUDA GPU; use --device cpu")
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.shape:
        shape, name = PAPER_SHAPES[args.shape], f"{args.shape} (random weights)"
        model = random_model(shape, args.device, dtype)
    else:
        model, _ = load_model(args.model, device=args.device, dtype=dtype)
        shape, name = ModelShape.of(model), args.model
    policies = {spec: budget_policy(spec, shape, name, sizes["seq_len"]) if ":" in spec and not spec.endswith(".json")
                else Policy.load(spec) for spec in args.policy}
    reference = None
    if device.type == "cuda" and hasattr(model.config, "ssm_cfg") and not args.no_transformers_reference:
        reference = transformers_twin(model)

    def write(doc):
        if args.out:
            atomic_write_json(args.out, {**doc, "model": name}, allow_nan=False)

    result = profile(model, policies, seq_len=sizes["seq_len"], memory_batch=sizes["memory_batch"],
                     prefill_batch=sizes["prefill_batch"], generate_batch=sizes["generate_batch"],
                     new_tokens=sizes["new_tokens"], repeats=sizes["repeats"],
                     measure=tuple(sizes["measure"].split(",")), reference=reference, trace=args.trace,
                     checkpoint=write)
    write(result)
    if not args.out:
        import json

        print(json.dumps({**result, "model": name}, indent=2))


if __name__ == "__main__":
    main()
