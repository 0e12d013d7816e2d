"""Generation with a reduced prefill: the prompt runs through the reduced model, then every new
token is decoded one at a time with the model's recurrent cache (SPEC §1: decoding is never reduced).

The reduced model fills the cache as it runs (`ReducedModel(..., cache=...)`): each layer stores the
conv window and SSM state of the (shortened) sequence that layer actually processed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

from ..reduced import ReducedModel, ReducedOutput


@torch.no_grad()
def reduced_prefill(reduced: ReducedModel, input_ids: torch.Tensor) -> tuple[torch.Tensor, DynamicCache, ReducedOutput]:
    """Prefill `input_ids` [B, N] (no padding: all rows of one length) with `protect_last=1`.

    -> (next-token logits [B, V] read from the row that carries position N-1, the filled cache,
    the ReducedOutput). Rows must share one length: a right-padded row would fold its padding into
    the recurrent state, and left padding would be part of the reducible prefix.
    """
    B, N = input_ids.shape
    cache = DynamicCache(config=reduced.model.config)
    out = reduced(input_ids, protect_last=1, cache=cache, last_logits_only=True)
    if not bool((out.positions[:, -1] == N - 1).all()):  # [B]
        raise RuntimeError("the reduced prefill lost the row of the last prompt token; it must be protected")
    next_logits = out.logits[:, -1]  # [B, V]
    return next_logits, cache, out


@torch.no_grad()
def greedy_generate(
    reduced: ReducedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    is_done: Callable[[Sequence[int]], bool],
) -> tuple[list[list[int]], ReducedOutput]:
    """Greedy decoding after a reduced prefill of `input_ids` [B, N] (rows of one length).

    `is_done(new_tokens)` says whether a row has finished (a stop sequence or end of text); a
    finished row stops growing. -> (new tokens per row, the prefill's ReducedOutput).
    """
    logits, cache, out = reduced_prefill(reduced, input_ids)
    B = input_ids.shape[0]
    new: list[list[int]] = [[] for _ in range(B)]
    running = list(range(B))
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)  # [B]
        for b in running:
            new[b].append(int(tokens[b]))
        running = [b for b in running if not is_done(new[b])]
        if not running or step == max_new_tokens - 1:
            break
        # Finished rows keep decoding in the batch (the cache is batched); their tokens are ignored.
        logits = reduced.model(input_ids=tokens[:, None], cache=cache, use_cache=True).logits[:, -1]  # [B, V]
    return new, out
