"""Generation with a reduced prefill: the prompt runs through the reduced model, then every new
token is decoded one at a time from the recurrent state the prefill left (docs/method.md §1:
decoding is never reduced).

The reduced model fills the cache as it runs (`ReducedModel(..., cache=...)`): each layer stores the
conv window and SSM state of the (shortened) sequence that layer actually processed. The cache is
the model's own kind: a transformers `DynamicCache`, or a mamba_ssm `InferenceParams`. For
mamba_ssm's CUDA-graph decoding see `utrc.native.generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .reduced import ReducedModel, ReducedOutput


@torch.no_grad()
def reduced_prefill(reduced: ReducedModel, input_ids: torch.Tensor, max_new_tokens: int = 1):
    """Prefill `input_ids` [B, N] (no padding: all rows of one length) with `protect_last=1`.

    -> (next-token logits [B, V] read from the row that carries position N-1, `step`, the
    ReducedOutput). `step(tokens [B]) -> logits [B, V]` decodes one token for every row. Rows must
    share one length: a right-padded row would fold its padding into the recurrent state, and left
    padding would be part of the reducible prefix.
    """
    B, N = input_ids.shape
    model = reduced.model
    if reduced.path == "mamba_ssm":
        from mamba_ssm.utils.generation import InferenceParams

        cache = InferenceParams(max_seqlen=N + max_new_tokens, max_batch_size=B)

        def step(tokens: torch.Tensor) -> torch.Tensor:
            logits = model(tokens[:, None], inference_params=cache).logits[:, -1]  # [B, V]
            cache.seqlen_offset += 1
            return logits
    else:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)

        def step(tokens: torch.Tensor) -> torch.Tensor:
            return model(input_ids=tokens[:, None], cache=cache, use_cache=True).logits[:, -1]  # [B, V]

    out = reduced(input_ids, protect_last=1, cache=cache, last_logits_only=True)
    if not bool((out.positions[:, -1] == N - 1).all()):  # [B]
        raise RuntimeError("the reduced prefill lost the row of the last prompt token; it must be protected")
    if reduced.path == "mamba_ssm":
        cache.seqlen_offset = N
    return out.logits[:, -1], step, out


@torch.no_grad()
def greedy_generate(
    reduced: ReducedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    is_done: Callable[[Sequence[int]], bool] = lambda _tokens: False,
) -> tuple[list[list[int]], ReducedOutput]:
    """Greedy decoding after a reduced prefill of `input_ids` [B, N] (rows of one length).

    `is_done(new_tokens)` says whether a row has finished (a stop sequence or end of text); a
    finished row stops growing. -> (new tokens per row, the prefill's ReducedOutput).
    """
    logits, step, out = reduced_prefill(reduced, input_ids, max_new_tokens)
    B = input_ids.shape[0]
    new: list[list[int]] = [[] for _ in range(B)]
    running = list(range(B))
    for i in range(max_new_tokens):
        tokens = logits.argmax(-1)  # [B]
        for b in running:
            new[b].append(int(tokens[b]))
        running = [b for b in running if not is_done(new[b])]
        if not running or i == max_new_tokens - 1:
            break
        # Finished rows keep decoding in the batch (the cache is batched); their tokens are ignored.
        logits = step(tokens)
    return new, out
