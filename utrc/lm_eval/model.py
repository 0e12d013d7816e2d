"""`UtrcLM`: lm-eval's Hugging Face model (`HFLM`) with the prefill reduced by a utrc policy.

Everything lm-eval does around the model is HFLM's own code: tokenisation and the context /
continuation split (`TemplateLM.loglikelihood`), rolling windows (`loglikelihood_rolling`),
generation batching, stop sequences and post-processing (`generate_until`), device and batch-size
handling. Three things change (docs/method.md §4):

* `_loglikelihood_tokens` runs the reduced model. Each request's input is
  `(context + continuation)[:-1]` left-truncated to `max_length`; its last `len(continuation)`
  tokens are protected, so the rows that score the continuation exist, and they are gathered by
  the original position each output row carries, never by a shifted window. Requests are sorted
  by length and batched as HFLM does; identical (input, continuation length) pairs are scored once.
* Rolling log-likelihood windows score every position, so nothing could be reduced: they run on
  the dense model (HFLM's own scoring) and the task is marked `dense_fallback`.
* `_model_generate` prefills with the reduced model (`protect_last=1`) and decodes greedily with
  the model's recurrent cache.

Realized cost: every request's prefill is costed from the tokens each layer actually processed
(`utrc.flops.realized_flops`) and attributed to its task (`Instance.task_name`); `realized()`
returns the totals, and `get_model_info()` puts them in lm-eval's results under
`config.utrc.realized`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

from ..flops import realized_flops
from ..generation import greedy_generate
from ..loading import load_model
from ..policy import ModelSpec, Policy, PolicyError
from ..reduced import apply
from ..shapes import ModelShape

DEFAULT_MAX_LENGTH = 2048  # the Mamba papers' evaluation length (lm-eval's mamba_ssm model uses it too)


@dataclass
class RealizedCost:
    """Prefill cost of a set of requests, dense and as run. Tokens are summed over layers."""

    requests: int = 0
    dense_tokens: int = 0  # n_layer x input length, summed over requests
    processed_tokens: int = 0  # tokens the blocks actually processed
    dense_flops: float = 0.0
    reduced_flops: float = 0.0
    dense_fallback: bool = False  # some requests of the task ran dense (loglikelihood_rolling)

    def add(self, other: "RealizedCost") -> None:
        self.requests += other.requests
        self.dense_tokens += other.dense_tokens
        self.processed_tokens += other.processed_tokens
        self.dense_flops += other.dense_flops
        self.reduced_flops += other.reduced_flops
        self.dense_fallback |= other.dense_fallback

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flops_reduction"] = 1.0 - self.reduced_flops / self.dense_flops if self.dense_flops else 0.0
        d["token_fraction"] = 1.0 - self.processed_tokens / self.dense_tokens if self.dense_tokens else 0.0
        return d


class UtrcLM(HFLM):
    """lm-eval model `utrc`: `--model utrc --model_args pretrained=REF,policy=PATH[,dtype=...,max_length=...]`.

    pretrained  a utrc model reference: a local directory (Hugging Face or mamba_ssm format), a hub
                id, or "demo:mamba2" / "demo:mamba" (loaded with `utrc.load_model`)
    policy      a `utrc-policy/1` file, a `utrc.Policy`, or "dense" (the unreduced model, scored
                by the same code path). Required: a missing or unfitting policy is an error, never
                a silent dense run.
    tokenizer   optional tokenizer directory / hub id (mamba_ssm checkpoints ship none)
    dtype       None (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16", "float16", "auto"
    max_length  input window in tokens (default 2048); a continuation longer than it is an error
    device, batch_size ("auto" too), max_batch_size and the other HFLM options work as for `hf`.
    """

    def __init__(
        self,
        pretrained: str,
        policy: str | Path | Policy | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        **kwargs,
    ) -> None:
        if not isinstance(pretrained, str):
            raise TypeError(f"pretrained: expected a model reference string, got {type(pretrained).__name__}")
        if kwargs.get("backend", "causal") != "causal":
            raise ValueError("backend: Mamba language models are causal; leave backend unset")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length: expected a positive integer, got {max_length!r}")
        policy_obj, self.policy_file = _read_policy(policy)  # a bad file fails before the model loads
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tok = load_model(pretrained, device=device, dtype=dtype, tokenizer=tokenizer)
        shape = ModelShape.of(model)
        if policy_obj is None:  # "dense"
            policy_obj = Policy.dense(ModelSpec.of(shape, name=pretrained))
        self.reduced = apply(model, policy_obj)  # PolicyError if the policy was made for another model
        self.policy = policy_obj
        self.shape = shape
        self._loaded = model
        self._pending: list[RealizedCost] = []  # costs of the requests of the current call, in order
        self._realized: dict[str, RealizedCost] = defaultdict(RealizedCost)
        kwargs.pop("backend", None)
        super().__init__(
            pretrained=pretrained,
            backend="causal",
            tokenizer=tok,
            device=str(device),
            max_length=max_length,
            **kwargs,
        )
        if self.reduced.device != self.device:  # a mamba_ssm model has no `.device`
            self._model.to(self.device)
        del self._loaded

    # --- HFLM construction hooks: hand over what utrc.load_model loaded ---------------------------
    def _get_config(self, pretrained, **kwargs) -> None:
        self._config = self._loaded.config

    def _create_model(self, pretrained, **kwargs) -> None:
        self._model = self._loaded

    def set_policy(self, policy: Policy) -> None:
        """Score later requests under `policy` (same model, nothing reloaded) and clear the realized
        costs. `PolicyError` if the policy was made for another model; the old policy then stays."""
        self.reduced = apply(self.model, policy)
        self.policy = policy
        self.policy_file = None
        self.reset_realized()

    # --- accounting -------------------------------------------------------------------------------
    def realized(self) -> dict[str, dict]:
        """{task name: RealizedCost.as_dict()} over every request scored since construction or reset."""
        return {task: cost.as_dict() for task, cost in sorted(self._realized.items())}

    def reset_realized(self) -> None:
        self._realized.clear()

    def _attribute(self, task_names, dense_fallback: bool = False) -> None:
        """Charge the costs collected since the call began to `task_names` (one name per cost, or
        one name for all of them)."""
        costs, self._pending = self._pending, []
        names = [task_names] * len(costs) if isinstance(task_names, str) or task_names is None else task_names
        if len(names) != len(costs):
            raise RuntimeError(f"{len(costs)} request costs for {len(names)} requests")
        for name, cost in zip(names, costs, strict=True):
            cost.dense_fallback |= dense_fallback
            self._realized[name or "unnamed"].add(cost)

    def get_model_info(self) -> dict:
        """Model facts for lm-eval's results["config"], plus the policy and the realized costs.

        Unlike HFLM's, this asks no hub for a commit hash (the ref may be local or "demo:")."""
        return {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(self._model.dtype).removeprefix("torch."),
            "utrc": {
                "pretrained": self.pretrained,
                "policy": self.policy.to_dict(),
                "policy_file": self.policy_file,
                "shape": asdict(self.shape),
                "device": str(self.device),
                "max_length": self.max_length,
                "realized": self.realized(),
            },
        }

    # --- loglikelihood ----------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._pending = []
        results = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        self._attribute([r.task_name for r in requests])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling windows, scored dense (every position is scored: nothing is reducible).
        One call per task so each window's cost is charged to its own task."""
        results: list = [None] * len(requests)
        for task, indices in _by_task(requests).items():
            self._pending = []
            scores = super().loglikelihood_rolling([requests[i] for i in indices], disable_tqdm=disable_tqdm)
            self._attribute(task, dense_fallback=True)
            for i, score in zip(indices, scores, strict=True):
                results[i] = score
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """Score `((context, continuation), context_enc, continuation_enc)` requests (TemplateLM's
        contract) -> [(log P(continuation | context), continuation is the greedy decode)] in order.

        HFLM's rolling windows carry the key None (see HFLM.loglikelihood_rolling): they go to HFLM's
        own dense scoring.
        """
        if any(key is None for key, _, _ in requests):
            return self._dense_windows(requests, disable_tqdm, override_bs)
        self._check_continuations(requests)

        # One forward row per distinct (input, protected suffix): identical pairs give identical
        # logits under any policy. HFLM's one-token "contexts" cache would instead share a row whose
        # protected suffix is the longest continuation of its group, changing how the others are reduced.
        rows: dict[tuple, list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            window = tuple((context + continuation)[-(self.max_length + 1) :][:-1])
            rows.setdefault((window, len(continuation)), []).append(i)
        batch_size = self.batch_size if self.batch_size != "auto" else (override_bs or 0)
        batch_fn = self._batch_scheduler if self.batch_size == "auto" and not override_bs else None
        if batch_fn is not None:
            self.batch_sizes = {}
        collator = Collator(list(rows.items()), sort_fn=lambda row: (-len(row[0][0]), row[0][0]))

        results: list = [None] * len(requests)
        costs: list = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in collator.get_batched(n=batch_size, batch_fn=_sized(batch_fn)):
            windows = [list(window) for (window, _), _ in chunk]
            logprobs, row_costs = self._score_windows(windows, [k for (_, k), _ in chunk])
            for ((_, _), indices), scored, cost in zip(chunk, logprobs, row_costs, strict=True):
                for i in indices:
                    key, _, continuation = requests[i]
                    target = torch.tensor(continuation, device=scored.device)  # [k]
                    answer = (
                        float(scored.gather(1, target[:, None]).sum()),
                        bool((scored.argmax(-1) == target).all()),
                    )
                    results[i], costs[i] = answer, cost
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                    pbar.update(1)
        pbar.close()
        self._pending.extend(costs)
        return results

    def _check_continuations(self, requests) -> None:
        """Every continuation's scored rows must fit the input window: refuse before any forward."""
        too_long = [len(c) for _, _, c in requests if len(c) > self.max_length]
        if too_long:
            raise ValueError(
                f"{len(too_long)} loglikelihood request(s) have a continuation longer than max_length="
                f"{self.max_length} tokens (longest: {max(too_long)}); the rows that score a continuation "
                f"must all be in the input. Raise max_length to at least {max(too_long)}."
            )

    def _score_windows(self, windows: list[list[int]], protect: list[int]):
        """Reduced forward of right-padded windows -> ([k_b, V] log-probs of each row's last k_b
        positions, gathered by original position; RealizedCost per row)."""
        B, N = len(windows), max(len(w) for w in windows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((B, N), pad, dtype=torch.long)  # [B, N]
        mask = torch.zeros((B, N), dtype=torch.long)  # [B, N]
        for b, w in enumerate(windows):
            ids[b, : len(w)] = torch.tensor(w)
            mask[b, : len(w)] = 1
        lengths = [len(w) for w in windows]
        autocast = self.mixed_precision_dtype is not None
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=autocast):
            out = self.reduced(ids.to(self.device), protect_last=torch.tensor(protect),
                               attention_mask=mask.to(self.device))
        wanted = [range(n - k, n) for n, k in zip(lengths, protect, strict=True)]
        rows = rows_at_positions(out.positions, wanted)
        logprobs = [
            F.log_softmax(out.logits[b, r], dim=-1, dtype=self.softmax_dtype or torch.float32)
            for b, r in enumerate(rows)
        ]  # each [k_b, V]
        return logprobs, self._costs(out.tokens_per_layer, protect, out.lengths, lengths)

    def _costs(self, tokens_per_layer, protect, rows_out, lengths) -> list[RealizedCost]:
        per_row = realized_flops(self.shape, self.policy, tokens_per_layer.tolist(), protect, rows_out.tolist())
        processed = tokens_per_layer.sum(0).tolist()  # [B]
        return [
            RealizedCost(1, self.shape.n_layer * n, int(p), dense, reduced)
            for n, p, (dense, reduced) in zip(lengths, processed, per_row, strict=True)
        ]

    def _dense_windows(self, requests, disable_tqdm, override_bs):
        """HFLM's own scoring on the dense model, costed as dense."""
        results = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        for _, context, continuation in requests:
            n = len((context + continuation)[-(self.max_length + 1) :][:-1])
            counts = torch.full((self.shape.n_layer, 1), n)
            self._pending.extend(self._costs(counts, [len(continuation)], torch.tensor([n]), [n]))
        return results

    # --- generation -------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """HFLM's generate_until, one call per task so each prefill is charged to its task."""
        results: list = [None] * len(requests)
        for task, indices in _by_task(requests).items():
            self._pending = []
            texts = super().generate_until([requests[i] for i in indices], disable_tqdm=disable_tqdm)
            self._attribute(task)
            for i, text in zip(indices, texts, strict=True):
                results[i] = text
        return results

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        """Greedy generation for HFLM.generate_until: context [B, T] left-padded (attention_mask in
        generation_kwargs) -> [B, T + new] token ids (context, then the new tokens, pad after a stop).

        Rows are prefilled in groups of one real length, so no row carries padding into its state."""
        mask = generation_kwargs.pop("attention_mask", None)
        _check_greedy(generation_kwargs)
        B, T = context.shape
        lengths = mask.sum(1).tolist() if mask is not None else [T] * B
        max_new = max_length - T
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        out = torch.full((B, T + max_new), pad, dtype=torch.long, device=context.device)  # [B, T + new]
        out[:, :T] = context

        def is_done(tokens) -> bool:
            return tokens[-1] == self.eot_token_id or any(s in self.tok_decode(tokens) for s in stop)

        groups: dict[int, list[int]] = defaultdict(list)
        for b, n in enumerate(lengths):
            groups[int(n)].append(b)
        costs: list = [None] * B
        for n, members in sorted(groups.items()):
            if n == 0:
                raise ValueError("generate_until: an empty context cannot be prefilled")
            ids = context[members, T - n :]  # [b, n] left padding stripped
            new, prefill = greedy_generate(self.reduced, ids, max_new, is_done)
            for b, tokens in zip(members, new, strict=True):
                out[b, T : T + len(tokens)] = torch.tensor(tokens, device=out.device)
            k = len(members)  # prefill cost; decoding is never reduced and not costed
            prefill_costs = self._costs(prefill.tokens_per_layer, [1] * k, prefill.lengths, [n] * k)
            for b, cost in zip(members, prefill_costs, strict=True):
                costs[b] = cost
        self._pending.extend(costs)
        return out


def rows_at_positions(positions: torch.Tensor, wanted) -> list[torch.Tensor]:
    """For each batch row b, the output rows carrying the original positions `wanted[b]`.

    positions [B, N'] int64 (-1 padding) as returned by the reduced model; wanted: B sequences of
    positions. A wanted position that no row carries raises RuntimeError: the row was reduced
    away, so the score it would give belongs to another position.
    """
    B = positions.shape[0]
    span = int(positions.max()) + 1 if positions.numel() else 0
    lookup = torch.full((B, max(span, 1)), -1, dtype=torch.long, device=positions.device)  # [B, span]
    b_idx, r_idx = (positions >= 0).nonzero(as_tuple=True)
    lookup[b_idx, positions[b_idx, r_idx]] = r_idx
    rows = []
    for b, want in enumerate(wanted):
        want = torch.as_tensor(list(want), dtype=torch.long, device=positions.device)
        found = lookup[b, want.clamp(max=lookup.shape[1] - 1)]
        if bool((want >= lookup.shape[1]).any()) or bool((found < 0).any()):
            raise RuntimeError(
                f"batch row {b}: scored positions {want.tolist()} are not all carried by output rows "
                "(a scored token was reduced away)"
            )
        rows.append(found)
    return rows


def _read_policy(policy) -> tuple[Policy | None, str | None]:
    """-> (Policy, file path or None); (None, None) for "dense"."""
    if isinstance(policy, Policy):
        return policy, None
    if policy is None or policy == "":
        raise PolicyError(
            "model_args needs policy=PATH (a utrc-policy/1 file); use policy=dense to evaluate the unreduced model"
        )
    if str(policy) == "dense":
        return None, None
    path = Path(policy).expanduser()
    return Policy.load(path), str(path)


def _by_task(requests) -> dict[str | None, list[int]]:
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, r in enumerate(requests):
        groups[r.task_name].append(i)
    return groups


def _sized(batch_fn):
    """HFLM's auto batch-size scheduler reads `(key, context, continuation)` requests; present
    the collated (row key, indices) items that way (input = context, one dummy continuation token)."""
    if batch_fn is None:
        return None
    return lambda pos, items: batch_fn(pos, _AsRequests(items))


class _AsRequests(Sequence):
    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        (window, _), _ = self.items[i]
        return (None, None), list(window), [0]


_GREEDY_KEYS = {"do_sample", "temperature", "top_p", "top_k"}


def _check_greedy(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - _GREEDY_KEYS)
    if unknown:
        raise ValueError(f"generate_until: utrc decodes greedily and does not support {unknown}")
    if kwargs.get("do_sample") or (kwargs.get("temperature") or 0.0) > 0.0:
        raise ValueError(
            "generate_until: utrc decodes greedily (do_sample=False, temperature=0); "
            f"got do_sample={kwargs.get('do_sample')}, temperature={kwargs.get('temperature')}"
        )
