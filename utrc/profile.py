"""Profile dense and reduced models: peak memory, prefill and generation throughput (SPEC §6).

Dense and every policy run in one process on the same inputs, so ratios compare like with like.
On a GPU: `torch.cuda.max_memory_allocated` around one prefill (minus what was held before),
CUDA events, warm-up, medians; decode steps replayed from one CUDA graph (`_GraphDecoder`);
`--trace` adds each prefill's GPU time by kernel. Dense runs through the same layer loop as the
policies with nothing to reduce. Without a GPU: wall time and resident-memory growth on the CPU,
labelled as such.

    python -m utrc.profile --shape state-spaces/mamba2-2.7b --policy paper:0.1 --policy evit:0.3 \\
        --out profile.json
    python -m utrc.profile --model demo:mamba2 --policy results/x/policies/searched-0.3.json

A `--policy` is a policy file, or METHOD:BUDGET with METHOD in paper | utrc | evit | tome: the paper's
layers with the one keep ratio that meets BUDGET nominal FLOPs reduction (utrc.flops.solve_keep).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from .flops import estimate_flops, solve_keep
from .loading import is_mamba_ssm_available, load_model
from .policy import LayerSpec, ModelSpec, Policy, paper_layers
from .reduced import apply
from .shapes import PAPER_SHAPES, ModelShape


def random_model(shape: ModelShape, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A transformers model of `shape` with random weights, built directly on `device`."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    # initializer_range 0.02 as in mamba_ssm: transformers' Mamba-2 default (0.1) blows up activations
    common = dict(initializer_range=0.02, vocab_size=shape.vocab_size, hidden_size=shape.d_model, num_hidden_layers=shape.n_layer,
                  state_size=shape.d_state, conv_kernel=shape.d_conv, expand=shape.d_inner // shape.d_model,
                  tie_word_embeddings=True)
    if shape.architecture == "mamba2":
        config = Mamba2Config(num_heads=shape.nheads, head_dim=shape.headdim, n_groups=shape.ngroups,
                              chunk_size=shape.chunk_size, **common)
        cls = Mamba2ForCausalLM
    else:
        config = MambaConfig(time_step_rank=shape.dt_rank, **common)
        cls = MambaForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def budget_policy(spec: str, shape: ModelShape, name: str = "", seq_len: int = 2048) -> Policy:
    """'paper:0.3' / 'evit:0.3' / 'tome:0.3' -> a policy at the paper's layers meeting the budget."""
    method, _, budget = spec.partition(":")
    method = "utrc" if method == "paper" else method
    base = Policy(method=method, model=ModelSpec.of(shape, name))
    layers = paper_layers(shape.n_layer)
    keep = solve_keep(shape, layers, float(budget), seq_len=seq_len, base_policy=base)
    return Policy(method=method, model=base.model, layers={l: LayerSpec(keep) for l in layers})


class _Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
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


def _runners(model, policy: Policy | None, decoder: "_GraphDecoder | None" = None):
    """(prefill(x, last), generate(x, n), prefill_into_cache(x)) for dense (None) or a policy.
    Generation: a (reduced) prefill fills a fresh cache; the decode steps run through `decoder`
    (one CUDA graph per step) when given, else eagerly. Decoding is never reduced (SPEC §1)."""
    from transformers import DynamicCache

    # dense runs through the same layer loop with nothing to reduce (bit for bit the transformers
    # model on the CPU), so both sides use the same kernels, e.g. utrc.mamba1_scan on a GPU
    reduced = apply(model, policy or Policy.dense(ModelSpec.of(ModelShape.of(model))))

    def prefill(x, last=False):
        return reduced(x, protect_last=1, last_logits_only=last).logits

    def prefill_into_cache(x):
        cache = DynamicCache(config=model.config)
        logits = reduced(x, protect_last=1, cache=cache, last_logits_only=True).logits
        return cache, logits[:, -1].argmax(-1)  # [B]

    def generate(x, new_tokens):
        cache, token = prefill_into_cache(x)
        if decoder is not None:
            return decoder.run(cache, token, new_tokens - 1)
        for _ in range(new_tokens - 1):
            token = model(input_ids=token[:, None], cache=cache, use_cache=True).logits[:, -1].argmax(-1)
        return token

    return prefill, generate, prefill_into_cache


class _GraphDecoder:
    """Greedy decode steps replayed from one CUDA graph (the role of mamba_ssm's `cg=True`).

    transformers' Mamba caches update their conv and recurrent states in place (static addresses,
    for CUDA graphs), so one captured step -- embed the token, 64 blocks' single-token kernels,
    lm_head, argmax, write the argmax back as the next input -- replays against a fixed cache.
    `run` copies a freshly prefilled cache's states into that fixed cache and replays. The capture
    (a one-off cost, like compilation) happens on the first `run` and is not in its timing path
    afterwards."""

    def __init__(self, model):
        self.model = model
        self.graph = None

    def _capture(self, cache, token):
        self.cache, self.token = cache, token[:, None].clone()  # [B, 1] static input
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (PyTorch's capture recipe)
            for _ in range(2):
                self.model(input_ids=self.token, cache=self.cache, use_cache=True)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            logits = self.model(input_ids=self.token, cache=self.cache, use_cache=True).logits  # [B, 1, V]
            self.token.copy_(logits[:, -1:].argmax(-1))

    def run(self, cache, token, steps: int) -> torch.Tensor:
        if self.graph is None:
            self._capture(cache, token)
        _copy_cache_states(self.cache, cache)
        self.token.copy_(token[:, None])
        for _ in range(steps):
            self.graph.replay()
        return self.token[:, 0]


def _copy_cache_states(dst, src) -> None:
    """Copy every layer's conv / recurrent state of cache `src` into the same tensors of `dst`."""
    for d_layer, s_layer in zip(dst.layers, src.layers, strict=True):
        for kind in ("conv_states", "recurrent_states"):
            for i, t in getattr(s_layer, kind).items():
                if t is not None:
                    getattr(d_layer, kind)[i].copy_(t)


def _graph_decode_check(model, decoder: _GraphDecoder, prefill_into_cache, x, steps: int = 8) -> float:
    """Share of greedy tokens on which graph replay and eager decoding agree after the same
    prefill (bf16 kernels may round differently under capture; a broken capture gives ~0)."""
    cache, token = prefill_into_cache(x)
    eager = []
    t = token
    for _ in range(steps):
        t = model(input_ids=t[:, None], cache=cache, use_cache=True).logits[:, -1].argmax(-1)
        eager.append(t)
    # the same replay as `_GraphDecoder.run`, one step at a time (the code measured on the H100)
    cache, token = prefill_into_cache(x)
    _copy_cache_states(decoder.cache, cache)
    decoder.token.copy_(token[:, None])
    graphed = []
    for _ in range(steps):
        decoder.graph.replay()
        graphed.append(decoder.token[:, 0].clone())
    return float((torch.stack(eager) == torch.stack(graphed)).float().mean())


def _kernel_trace(fn, top: int = 15) -> dict:
    """GPU time of one call of `fn` by kernel (torch.profiler): where a prefill's time goes.
    `busy_fraction` = summed kernel time / wall time; below 1, the GPU waited for the host
    (launches, synchronisations)."""
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
    return {
        "wall_s": wall,
        "kernel_s": busy,
        "busy_fraction": busy / wall,
        "kernels": sum(v[1] for v in per_kernel.values()),
        "top": [{"kernel": k[:160], "s": v[0], "calls": v[1]} for k, v in ranked[:top]],
    }


def profile(
    model,
    policies: dict[str, Policy],
    *,
    seq_len: int = 2048,
    memory_batch: int = 96,
    prefill_batch: int = 16,
    generate_batch: int = 16,
    new_tokens: int = 100,
    repeats: int = 5,
    warmup: int = 2,
    measure: tuple[str, ...] = ("memory", "prefill", "generate"),
    progress_path: str | None = None,
    cuda_graphs: bool = True,
    trace: bool = False,
) -> dict:
    """Measure dense and each policy on the same inputs. Returns a JSON-ready dict.
    `progress_path`: rewritten after each policy with the rows so far, so a run cut short keeps them.
    `cuda_graphs`: decode steps replay one CUDA graph (GPU only; falls back to eager decoding,
    noted in the result, if capture fails). `trace`: add each prefill's GPU time by kernel."""
    device = model.lm_head.weight.device
    shape = ModelShape.of(model)
    timer = _Timer(device)
    g = torch.Generator(device="cpu").manual_seed(0)

    def batch(n):
        return torch.randint(0, shape.vocab_size, (n, seq_len), generator=g).to(device)

    x_mem, x_pre, x_gen = (batch(memory_batch) if "memory" in measure else None), batch(prefill_batch), batch(
        generate_batch
    )
    rows: dict[str, dict] = {}
    decoder = _GraphDecoder(model) if cuda_graphs and device.type == "cuda" and "generate" in measure else None
    decode_notes: list[str] = []
    for name, policy in {"dense": None, **policies}.items():
        prefill, generate, prefill_into_cache = _runners(model, policy, decoder)
        row: dict = {}
        if policy is not None:
            est = estimate_flops(shape, policy, seq_len=seq_len, protect_last=1)
            row.update(policy=policy.to_dict(), nominal_flops_reduction=est["reduction"],
                       ideal_speedup=est["dense"] / est["reduced"], token_fraction_proxy=est["token_fraction_proxy"])
        with torch.no_grad():
            if "memory" in measure:
                for variant, last in (("all_logits", False), ("last_logits", True)):
                    try:
                        row[f"peak_memory_gib_{variant}"] = _peak_memory(lambda: prefill(x_mem, last), device)
                    except torch.OutOfMemoryError:
                        row[f"peak_memory_gib_{variant}"] = None
                        row.setdefault("notes", []).append(f"out of memory at batch {memory_batch} ({variant})")
                        torch.cuda.empty_cache()
            if "prefill" in measure:
                row["prefill_s"] = timer(lambda: prefill(x_pre), repeats, warmup)
                row["prefill_tokens_per_s"] = prefill_batch * seq_len / row["prefill_s"]
            if "generate" in measure:
                if decoder is not None and decoder.graph is None:
                    try:
                        generate(x_gen, 2)  # captures the decode graph
                        decode_notes.append("decode graph agrees with eager decoding on "
                                            f"{_graph_decode_check(model, decoder, prefill_into_cache, x_gen):.1%} of 8 greedy steps")
                    except Exception as exc:  # capture unsupported on this stack: measure eagerly, say so
                        decode_notes.append(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding eagerly")
                        decoder = None
                        prefill, generate, prefill_into_cache = _runners(model, policy, None)
                row["generate_s"] = timer(lambda: generate(x_gen, new_tokens), max(1, repeats // 2), 1)
                row["generate_tokens_per_s"] = generate_batch * new_tokens / row["generate_s"]
            if trace and device.type == "cuda":
                row["prefill_kernel_trace"] = _kernel_trace(lambda: prefill(x_pre))
        rows[name] = row
        if progress_path:
            with open(progress_path, "w") as f:
                json.dump({"partial": rows}, f, indent=2)
        print(f"[utrc.profile] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                    if isinstance(v, float)), file=sys.stderr, flush=True)
    dense = rows["dense"]
    for name, row in rows.items():
        if name == "dense":
            continue
        if "prefill_s" in row:
            row["prefill_speedup"] = dense["prefill_s"] / row["prefill_s"]
            row["prefill_speedup_over_ideal"] = row["prefill_speedup"] / row["ideal_speedup"]
        if "generate_s" in row:
            row["generate_speedup"] = dense["generate_s"] / row["generate_s"]
        for variant in ("all_logits", "last_logits"):
            d, r = dense.get(f"peak_memory_gib_{variant}"), row.get(f"peak_memory_gib_{variant}")
            if d and r is not None:
                row[f"peak_memory_reduction_{variant}"] = 1 - r / d
    import transformers

    return {
        "format": "utrc-profile/1",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, "
        f"{torch.get_num_threads()} threads) — wall time and RSS growth, not GPU figures",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "mamba_ssm_kernels": device.type == "cuda" and is_mamba_ssm_available(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "shape": {k: v for k, v in vars(shape).items()},
        "protocol": dict(seq_len=seq_len, memory_batch=memory_batch, prefill_batch=prefill_batch,
                         generate_batch=generate_batch, new_tokens=new_tokens, repeats=repeats, warmup=warmup,
                         measure=list(measure), decode_cuda_graphs=decoder is not None),
        "decode_notes": decode_notes,
        "results": rows,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=sorted(PAPER_SHAPES), help="random weights of a paper checkpoint's shape")
    src.add_argument("--model", help="a model reference for utrc.load_model")
    ap.add_argument("--policy", action="append", default=[], help="policy file or METHOD:BUDGET (repeatable)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--memory-batch", type=int, default=96)
    ap.add_argument("--prefill-batch", type=int, default=16)
    ap.add_argument("--generate-batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--measure", default="memory,prefill,generate")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly (default on a GPU: CUDA graphs)")
    ap.add_argument("--trace", action="store_true", help="add each prefill's GPU time by kernel (torch.profiler)")
    ap.add_argument("--out", help="write the JSON result here (default: stdout)")
    args = ap.parse_args(argv)

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device != "cpu" else torch.float32)
    if args.shape:
        shape, name = PAPER_SHAPES[args.shape], f"{args.shape} (random weights)"
        model = random_model(shape, args.device, dtype)
    else:
        model, _ = load_model(args.model, device=args.device, dtype=dtype)
        shape, name = ModelShape.of(model), args.model
    policies = {}
    for spec in args.policy:
        if ":" in spec and spec.split(":")[0] in ("paper", "utrc", "evit", "tome"):
            policies[spec] = budget_policy(spec, shape, name, args.seq_len)
        else:
            policies[spec] = Policy.load(spec)
    result = profile(model, policies, seq_len=args.seq_len, memory_batch=args.memory_batch,
                     prefill_batch=args.prefill_batch, generate_batch=args.generate_batch,
                     new_tokens=args.new_tokens, repeats=args.repeats, measure=tuple(args.measure.split(",")),
                     progress_path=args.out + ".partial" if args.out else None,
                     cuda_graphs=not args.no_cuda_graphs, trace=args.trace)
    result["model"] = name
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
