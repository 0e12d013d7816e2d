"""search.calibrate and search.data: per-layer statistics on tiny models, files, hashes, bad input."""

import json
import random

import pandas as pd
import pytest
import torch
from conftest import VOCAB, tiny_config, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Mamba2ForCausalLM, PreTrainedTokenizerFast

from search import calibrate as cal_mod
from search.calibrate import CalibrationConfig, CalibrationError, calibrate, load_summary, save
from search.data import DataError, document_rows, load_documents, token_stream, windows
from search.space import SearchSpace
from search.study import space_from_calibration
from utrc import LayerSpec, ModelShape, ModelSpec, Policy, apply

WORDS = ["<|endoftext|>", "<|padding|>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3)]


def tiny_tokenizer():
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|padding|>", unk_token="<unk>")


def write_checkpoint(directory, architecture="mamba2", n_layer=6, n_docs=60, words=40, seed=0):
    """A tiny model + word-level tokenizer saved in Hugging Face format, and a .jsonl text file."""
    model = tiny_model(architecture, n_layer=n_layer)
    model.save_pretrained(directory / "model")
    tiny_tokenizer().save_pretrained(directory / "model")
    rng = random.Random(seed)
    text = directory / "text.jsonl"
    with open(text, "w") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS[3:]) for _ in range(words))}) + "\n")
    return directory / "model", text


def ids(n=6, length=40, seed=0):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


pytestmark = pytest.mark.usefixtures("one_thread")


CONFIG = CalibrationConfig(score_last=4, batch_size=4)


def test_statistics_cover_every_layer_source_and_metric(architecture):
    model = tiny_model(architecture, n_layer=5)
    cal = calibrate(model, ids(), CONFIG, model_name="tiny")
    t = cal.table
    sources = {"mamba2": {"ssm_output", "scan_output", "mixer_output"},
               "mamba": {"ssm_output", "mixer_output"}}[architecture]
    for kind in ("importance", "match"):
        part = t[t.kind == kind]
        assert set(part.source) == sources
        assert set(part.metric) == {"clip", "l1", "l2", "signed"}
        assert set(part.layer) == set(range(5))
        assert {"q05", "q50", "q95", "mean", "std", "rel_iqr"} <= set(part.stat)
    match = t[(t.kind == "match") & t.stat.str.startswith("q")]
    assert match.value.between(-1.0001, 1.0001).all()  # cosine similarities
    pos = t[t.kind == "activation"]
    assert len(pos) == 5 * len(sources) and pos.value.between(0, 1).all()
    clip = t[(t.kind == "importance") & (t.metric == "clip") & (t.stat == "q01")]
    assert (clip.value >= 0).all()  # clip scores are means of max(0, y)
    sens = t[(t.kind == "sensitivity") & (t.stat == "kl")]
    assert len(sens) == 5 * 3 and (sens.value >= 0).all()


def test_sensitivity_matches_the_public_reduced_model():
    """The calibration's fast path (cached dense stream + tail) gives the KL of utrc.apply."""
    model = tiny_model("mamba2", n_layer=5)
    x = ids()
    cal = calibrate(model, x, CONFIG)
    spec = ModelSpec.of(ModelShape.of(model))
    with torch.no_grad():
        dense = torch.log_softmax(model(x).logits[:, -4:].float(), -1)
    for layer, keep in ((1, 0.7), (3, 0.9)):
        out = apply(model, Policy(method="utrc", model=spec, layers={layer: LayerSpec(keep)}))(x, protect_last=4)
        reduced = torch.log_softmax(out.logits[:, -4:], -1)
        kl = float((dense.exp() * (dense - reduced)).sum(-1).mean())
        row = cal.table.query("kind == 'sensitivity' and stat == 'kl' and layer == @layer and keep == @keep")
        assert row.value.item() == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert kl > 0


def test_reducing_after_the_last_block_never_changes_scored_positions():
    model = tiny_model("mamba", n_layer=4)
    curves = calibrate(model, ids(), CONFIG).summary["sensitivity"]["kl"]["clip/ssm_output"]
    assert curves["3"] == [0.0, 0.0, 0.0]
    assert max(curves["0"]) > 0


def test_gated_norm_with_unit_weights_makes_l2_uninformative():
    """docs/method.md §1: after Mamba-2's gated RMSNorm with unit weights every token has the same l2 score."""
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(tiny_config("mamba2", n_layer=3)).eval()  # norm weights all ones
    cal = calibrate(model, ids(), CalibrationConfig(score_last=4, sensitivity_keeps=(0.8,)))
    signal = cal.summary["importance_signal"]
    assert not signal["l2/ssm_output"]["informative"]
    assert signal["clip/ssm_output"]["informative"] and signal["l2/scan_output"]["informative"]
    space = space_from_calibration(SearchSpace(layers=(1,), importance=("l2/ssm_output", "clip/ssm_output")),
                                   cal.summary)
    assert space.importance == ("clip/ssm_output",)
    assert "l2/ssm_output" in space.notes[0]


def test_files_hashes_and_round_trip(tmp_path):
    model = tiny_model("mamba2", n_layer=3)
    x = ids()
    a = calibrate(model, x, CONFIG, model_name="tiny")
    b = calibrate(model, ids(seed=1), CONFIG, model_name="tiny")
    c = calibrate(model, x, CalibrationConfig(score_last=5, batch_size=4), model_name="tiny")
    assert a.summary["hashes"]["model"] == b.summary["hashes"]["model"]
    assert a.summary["hashes"]["data"] != b.summary["hashes"]["data"]
    assert a.summary["hashes"]["settings"] != c.summary["hashes"]["settings"]
    assert len({a.summary["hash"], b.summary["hash"], c.summary["hash"]}) == 3
    for suffix in ("parquet", "csv"):
        save(a, tmp_path / f"t.{suffix}", tmp_path / f"s-{suffix}.json")
        back = pd.read_parquet(tmp_path / "t.parquet") if suffix == "parquet" else pd.read_csv(tmp_path / "t.csv")
        assert len(back) == len(a.table)
        summary = load_summary(tmp_path / f"s-{suffix}.json")
        assert summary["hash"] == a.summary["hash"] and summary["table"]["path"] == f"t.{suffix}"
    with pytest.raises(CalibrationError, match="parquet or .csv"):
        save(a, tmp_path / "t.xlsx", tmp_path / "s.json")


def test_bad_input_stops_before_any_forward_pass(tmp_path):
    model = tiny_model("mamba", n_layer=3)
    with pytest.raises(CalibrationError, match="calibration set is empty"):
        calibrate(model, torch.zeros(0, 40, dtype=torch.int64), CONFIG)
    with pytest.raises(CalibrationError, match="scan_output"):
        calibrate(model, ids(), CalibrationConfig(score_last=4, sources=("scan_output",)))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="is empty"):
        load_documents(str(empty))
    with pytest.raises(DataError, match="not found"):
        load_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="too short"):
        windows(torch.arange(100), 3, 40)
    with pytest.raises(DataError, match="2 documents, 3 requested"):
        document_rows(["a b", "c d"], tiny_tokenizer(), 3, 10)
    head, tail = windows(torch.arange(100), 1, 30, part="head"), windows(torch.arange(100), 2, 30, part="tail")
    assert head[0, 0] == 0 and tail[-1, -1] == 99 and head.max() < tail.min()
    with pytest.raises(CalibrationError, match="not found"):
        load_summary(tmp_path / "nope.json")


def test_command_line_writes_table_and_summary(tmp_path, capsys):
    model_dir, text = write_checkpoint(tmp_path, "mamba", n_layer=3)
    docs = load_documents(str(text))
    assert len(token_stream(docs, tiny_tokenizer())) == 60 * 40 + 59  # EOS between documents
    cal_mod.main(["--model", str(model_dir), "--text", str(text), "--n-sequences", "4", "--seq-len", "32",
                  "--score-last", "4", "--keeps", "0.8", "--out-table", str(tmp_path / "c.parquet"),
                  "--out-summary", str(tmp_path / "c.json")])
    summary = load_summary(tmp_path / "c.json")
    assert summary["model"]["name"] == str(model_dir)
    assert summary["data"]["text"] == str(text) and summary["data"]["n_sequences"] == 4
    assert list(summary["sensitivity"]["kl"]["clip/ssm_output"]) == ["0", "1", "2"]
    with pytest.raises(SystemExit):
        cal_mod.main(["--model", str(model_dir), "--text", str(tmp_path / "missing.txt"),
                      "--out-table", str(tmp_path / "x.csv"), "--out-summary", str(tmp_path / "x.json")])
    assert "not found" in capsys.readouterr().err
