"""Calibration text -> fixed-size token windows (head for calibration statistics, tail for the dev set).

A *text spec* names where the text comes from:

* ``"demo"`` or ``"demo:COUNT"``: ``demo.calibration_texts(COUNT, seed)`` (COUNT defaults to
  ``DEMO_POOL``), the text of the repository's demo generator;
* a path to a local file: ``.txt`` (the whole file is one text), ``.jsonl`` (one JSON object per
  line with a ``"text"`` field) or ``.json`` (a list of strings);
* ``"hf:NAME[:CONFIG[:SPLIT]]"``: a Hugging Face dataset through ``datasets.load_dataset``
  (split ``train`` unless named; the ``text`` column). Needs the dataset in the local cache when
  the machine is offline.

The documents are tokenized, joined with the tokenizer's EOS token between them into one stream,
and cut into windows of ``length`` tokens. Calibration statistics take windows from the *head* of
the stream, the search's dev set from the *tail*, so the two never share a token of text; if the
stream is too short for both, `windows` says how many tokens are missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DEMO_POOL = 512
"""Texts drawn from the demo generator when the spec says just ``"demo"``."""


class DataError(ValueError):
    """The calibration text is missing, empty or too short for the requested windows."""


def load_documents(spec: str, seed: int | None = None) -> list[str]:
    """The documents named by a text spec (see the module docstring), in a fixed order; `seed`
    seeds the demo generator (None: its default).

    Raises DataError if the source does not exist or yields no non-empty text.
    """
    if spec == "demo" or spec.startswith("demo:"):
        count = DEMO_POOL if spec == "demo" else _positive_int(spec[len("demo:") :], spec)
        import demo  # the repository's demo generator, needed for this text only

        docs = list(demo.calibration_texts(count) if seed is None else demo.calibration_texts(count, seed))
    elif spec.startswith("hf:"):
        docs = _hf_documents(spec)
    else:
        docs = _file_documents(Path(spec))
    docs = [d for d in docs if isinstance(d, str) and d.strip()]
    if not docs:
        raise DataError(f"calibration text {spec!r} is empty: it yielded no non-empty document")
    return docs


def token_stream(documents: list[str], tokenizer) -> torch.Tensor:
    """Tokenize and join the documents with EOS between them -> [T] int64."""
    if not documents:
        raise DataError("calibration text is empty: no documents to tokenize")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        if ids and eos is not None:
            ids.append(eos)
        ids.extend(doc)
    return torch.tensor(ids, dtype=torch.int64)


def windows(stream: torch.Tensor, n: int, length: int, part: str = "head") -> torch.Tensor:
    """`n` non-overlapping windows of `length` tokens from the head or the tail of `stream` -> [n, length]."""
    if n < 1 or length < 2:
        raise DataError(f"need at least 1 window of at least 2 tokens; got n={n}, length={length}")
    need = n * length
    if stream.numel() < need:
        raise DataError(
            f"calibration text too short: {n} windows x {length} tokens need {need} tokens, the text has "
            f"{stream.numel()}; give more text (e.g. demo:COUNT with a larger COUNT) or fewer/shorter windows"
        )
    if part == "head":
        return stream[:need].view(n, length).clone()
    if part == "tail":
        return stream[stream.numel() - need :].view(n, length).clone()
    raise ValueError(f"part: expected 'head' or 'tail', got {part!r}")


def document_rows(documents: list[str], tokenizer, n: int, max_len: int, part: str = "tail",
                  pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` whole documents as right-padded rows, shortest first -> (ids [n, L], lengths [n]).

    Documents come from the head or the tail of the list; one longer than `max_len` tokens keeps its
    last `max_len` (its end is what gets scored, as lm-eval keeps the end of a long context).
    """
    if n < 1:
        raise DataError(f"need at least 1 document, got n={n}")
    if len(documents) < n:
        raise DataError(f"calibration text has {len(documents)} documents, {n} requested")
    chosen = documents[:n] if part == "head" else documents[len(documents) - n :]
    rows = [ids[-max_len:] for ids in tokenizer(chosen, add_special_tokens=False)["input_ids"]]
    rows.sort(key=len)
    if len(rows[0]) < 2:
        raise DataError("a dev document has fewer than 2 tokens")
    L = len(rows[-1])
    ids = torch.full((n, L), pad_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.int64)


# --- sources ----------------------------------------------------------------------------------


def _positive_int(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"text spec {spec!r}: expected demo:COUNT with a positive integer COUNT")
    return int(text)


def _file_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(
            f"calibration text {str(path)!r} not found: give 'demo', an existing .txt/.jsonl/.json file, "
            "or hf:DATASET[:CONFIG[:SPLIT]]"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{i}: expected a JSON object with a 'text' field") from None
        return docs
    if path.suffix == ".json":
        docs = json.loads(text)
        if not isinstance(docs, list):
            raise DataError(f"{path}: expected a JSON list of strings")
        return docs
    return [text]


def _hf_documents(spec: str) -> list[str]:
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"text spec {spec!r}: expected hf:NAME[:CONFIG[:SPLIT]]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 else "train"
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown name, ...: say which dataset, keep the cause
        raise DataError(
            f"could not load Hugging Face dataset {name!r} (config {config}, split {split}): {err}") from err
    if "text" not in ds.column_names:
        raise DataError(f"dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    return list(ds["text"])
