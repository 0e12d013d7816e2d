"""The demo models' word-level tokenizer, built offline with `tokenizers` from the closed vocabulary.

One token per whitespace-separated word (the generator writes punctuation as separate words), ids
0..2 for <pad> <unk> <eos>, then `vocab.all_words()` in sorted order. No special tokens are added
when encoding, so lm-eval's `context + continuation` splitting sees exactly one token per word.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from . import vocab as V


def vocabulary() -> dict[str, int]:
    """token -> id, special tokens first."""
    return {w: i for i, w in enumerate([*V.SPECIAL_TOKENS, *V.all_words()])}


def build_tokenizer():
    """A transformers fast tokenizer over the demo vocabulary (save it with `save_pretrained`)."""
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=V.UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=V.UNK,
        pad_token=V.PAD,
        eos_token=V.EOS,
        bos_token=V.EOS,
        model_max_length=4096,
    )
