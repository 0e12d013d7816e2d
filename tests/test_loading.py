"""utrc.loading: Hugging Face and mamba_ssm checkpoints written locally, offline errors, safety."""

import json
import math
import re

import huggingface_hub.constants
import pytest
import torch
from conftest import VOCAB, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from utrc import loading
from utrc.loading import load_model, save_mamba_ssm_checkpoint

CLASSES = {"mamba": MambaForCausalLM, "mamba2": Mamba2ForCausalLM}
WORDS = ["<|endoftext|>", "<|padding|>", "<unk>", "the", "cat", "sat", "on", "a", "mat", "dog"]


def tiny_tokenizer():
    """A word-level tokenizer built offline (no hub), GPT-NeoX-like special tokens."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
        unk_token="<unk>",
    )


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, VOCAB, (2, 21), generator=g)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty HF_HOME: nothing cached, no network."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub reads these at import time; patch the live values too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def write(model, directory, fmt, tokenizer=True):
    if fmt == "hf":
        model.save_pretrained(directory)
    else:
        save_mamba_ssm_checkpoint(model, directory)
    if tokenizer:
        tiny_tokenizer().save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["hf", "mamba_ssm"])
@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_same_logits(architecture, fmt, tied, tmp_path, ids):
    model = tiny_model(architecture)
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    expected = logits(model, ids)
    write(model, tmp_path / "ckpt", fmt)

    loaded, tok = load_model(str(tmp_path / "ckpt"))

    assert type(loaded) is CLASSES[architecture]
    assert not loaded.training
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert torch.equal(logits(loaded, ids), expected)
    if tied:
        assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    assert isinstance(tok, PreTrainedTokenizerBase)
    assert tok("the cat sat on a mat").input_ids == [3, 4, 5, 6, 7, 8]
    assert tok.decode([3, 9]) == "the dog"


def test_mamba_ssm_sets_token_ids_from_tokenizer(architecture, tmp_path):
    write(tiny_model(architecture), tmp_path, "mamba_ssm")
    loaded, tok = load_model(tmp_path)  # a Path works too
    assert loaded.config.eos_token_id == tok.eos_token_id == 0
    assert loaded.config.pad_token_id == tok.pad_token_id == 1


def test_dtype_option(architecture, tmp_path, ids):
    model = tiny_model(architecture)
    write(model, tmp_path, "mamba_ssm")
    loaded, _ = load_model(str(tmp_path), dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    loaded, _ = load_model(str(tmp_path), dtype=torch.float16)
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    loaded, _ = load_model(str(tmp_path), dtype="auto")  # the checkpoint's own dtype
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(tmp_path), dtype="int8")


def test_tokenizer_argument_wins(architecture, tmp_path):
    write(tiny_model(architecture), tmp_path / "m", "hf", tokenizer=False)
    tok = tiny_tokenizer()
    _, got = load_model(str(tmp_path / "m"), tokenizer=tok)
    assert got is tok
    tok.save_pretrained(tmp_path / "tok")
    _, got = load_model(str(tmp_path / "m"), tokenizer=str(tmp_path / "tok"))
    assert got("the dog").input_ids == [3, 9]
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        load_model(str(tmp_path / "m"), tokenizer=str(tmp_path / "no-such-tokenizer"))


# ------------------------------------------------------------------------ the mamba_ssm format


def test_mamba_ssm_files_are_that_format(architecture, tmp_path):
    model = tiny_model(architecture)
    save_mamba_ssm_checkpoint(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert "model_type" not in cfg and "architectures" not in cfg
    assert cfg["d_model"] == 32 and cfg["n_layer"] == 4 and cfg["vocab_size"] == VOCAB
    assert cfg["d_intermediate"] == 0 and cfg["attn_layer_idx"] == [] and cfg["attn_cfg"] == {}
    assert cfg["rms_norm"] is True and cfg["tie_embeddings"] is False
    for key in ("residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple"):
        assert key in cfg
    ssm = cfg["ssm_cfg"]
    if architecture == "mamba2":
        assert ssm["layer"] == "Mamba2"
        assert (ssm["d_state"], ssm["headdim"], ssm["ngroups"], ssm["chunk_size"]) == (8, 16, 1, 8)
    else:
        assert "layer" not in ssm  # the state-spaces Mamba-1 configs carry no layer name
        assert (ssm["d_state"], ssm["dt_rank"], ssm["expand"]) == (8, 4, 2)

    state = torch.load(tmp_path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert type(state) is dict and all(isinstance(v, torch.Tensor) for v in state.values())
    assert "backbone.embedding.weight" in state and "backbone.embeddings.weight" not in state
    assert "lm_head.weight" in state and "backbone.norm_f.weight" in state
    assert "backbone.layers.3.norm.weight" in state
    names = {k.split("mixer.", 1)[1] for k in state if k.startswith("backbone.layers.0.mixer.")}
    if architecture == "mamba2":
        assert names == {
            "in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
            "norm.weight", "out_proj.weight",
        }
        assert state["backbone.layers.0.mixer.A_log"].shape == (4,)  # nheads = 2*32/16
    else:
        assert names == {
            "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
            "dt_proj.bias", "A_log", "D", "out_proj.weight",
        }
        assert state["backbone.layers.0.mixer.A_log"].shape == (64, 8)  # (d_inner, d_state)


def test_tied_mamba_ssm_state_dict_has_both_names(architecture, tmp_path):
    model = tiny_model(architecture)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    save_mamba_ssm_checkpoint(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_embeddings"] is True
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert torch.equal(state["lm_head.weight"], state["backbone.embedding.weight"])


def _defaults_model(architecture):
    """A model with mamba_ssm's default mixer settings (what a bare state-spaces config means)."""
    torch.manual_seed(1)
    if architecture == "mamba2":  # d_state 128, headdim 64, ngroups 1, chunk 256
        d_model = 64
        cfg = Mamba2Config(
            vocab_size=64, hidden_size=d_model, num_hidden_layers=2, expand=2, head_dim=64,
            num_heads=2, state_size=128, n_groups=1, chunk_size=256, tie_word_embeddings=True,
        )
        model = Mamba2ForCausalLM(cfg)
    else:  # d_state 16, d_conv 4, expand 2, dt_rank ceil(d_model / 16)
        d_model = 48
        cfg = MambaConfig(
            vocab_size=64, hidden_size=d_model, num_hidden_layers=2, expand=2, state_size=16,
            time_step_rank="auto", tie_word_embeddings=True,
        )
        model = MambaForCausalLM(cfg)
        assert model.config.time_step_rank == math.ceil(d_model / 16) == 3
    return model.eval(), d_model


def test_reads_state_spaces_style_config(architecture, tmp_path, ids):
    """config.json as published by state-spaces (defaults left out, vocab padded by the model)."""
    model, d_model = _defaults_model(architecture)
    save_mamba_ssm_checkpoint(model, tmp_path)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state["lm_head.weight"]  # tied: the reader takes the embedding
    torch.save(state, tmp_path / "pytorch_model.bin")
    if architecture == "mamba2":
        cfg = {
            "d_model": d_model, "d_intermediate": 0, "n_layer": 2, "vocab_size": 61,
            "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": 16, "tie_embeddings": True,
        }
    else:  # the Mamba-1 checkpoints predate d_intermediate / attn_* / tie_embeddings
        cfg = {
            "d_model": d_model, "n_layer": 2, "vocab_size": 61, "ssm_cfg": {}, "rms_norm": True,
            "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
        }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tiny_tokenizer().save_pretrained(tmp_path)

    loaded, _ = load_model(str(tmp_path))
    c = loaded.config
    assert c.vocab_size == 64 and c.tie_word_embeddings
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    if architecture == "mamba2":
        assert (c.state_size, c.head_dim, c.num_heads, c.n_groups, c.chunk_size) == (128, 64, 2, 1, 256)
    else:
        assert (c.state_size, c.conv_kernel, c.expand, c.time_step_rank) == (16, 4, 2, 3)
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_unknown_key_is_named(architecture, tmp_path):
    write(tiny_model(architecture), tmp_path, "mamba_ssm")
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["backbone.layers.0.mixer.surprise_weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"backbone\.layers\.0\.mixer\.surprise_weight"):
        load_model(str(tmp_path))


def test_missing_key_is_named(architecture, tmp_path):
    write(tiny_model(architecture), tmp_path, "mamba_ssm")
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state["backbone.layers.2.mixer.out_proj.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys: backbone\.layers\.2\.mixer\.out_proj\.weight"):
        load_model(str(tmp_path))


def test_shape_mismatch_is_named(tmp_path):
    write(tiny_model("mamba"), tmp_path, "mamba_ssm")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["ssm_cfg"]["d_state"] = 16  # the weights have 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"A_log"):
        load_model(str(tmp_path))


def test_hf_format_unknown_or_missing_key_is_named(architecture, tmp_path):
    from safetensors.torch import load_file, save_file

    write(tiny_model(architecture), tmp_path, "hf")
    state = load_file(tmp_path / "model.safetensors")
    state["backbone.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unknown keys: backbone\.extra\.weight"):
        load_model(str(tmp_path))
    del state["backbone.extra.weight"], state["backbone.layers.1.mixer.D"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: backbone\.layers\.1\.mixer\.D"):
        load_model(str(tmp_path))


PICKLE_RAN = []


def _side_effect():
    PICKLE_RAN.append(True)
    return torch.zeros(1)


class _NotATensor:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_object_refused(tmp_path):
    write(tiny_model("mamba2"), tmp_path, "mamba_ssm")
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["backbone.norm_f.weight"] = _NotATensor()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        load_model(str(tmp_path))
    assert PICKLE_RAN == []


def test_non_tensor_entry_refused(tmp_path):
    write(tiny_model("mamba"), tmp_path, "mamba_ssm")
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["step"] = 7  # weights_only allows ints; a state dict holds tensors only
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="'step'"):
        load_model(str(tmp_path))


TINY_SSM = {"layer": "Mamba2", "headdim": 16, "d_state": 8, "chunk_size": 8}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ssm_cfg": {**TINY_SSM, "D_has_hdim": True}}, "D_has_hdim"),
        ({"ssm_cfg": {**TINY_SSM, "rmsnorm": False}}, "rmsnorm"),
        ({"ssm_cfg": {**TINY_SSM, "norm_before_gate": True}}, "norm_before_gate"),
        ({"attn_layer_idx": [1], "attn_cfg": {"num_heads": 2}}, "attn_layer_idx"),
        ({"d_intermediate": 64}, "d_intermediate"),
        ({"rms_norm": False}, "rms_norm"),
        ({"ssm_cfg": {"layer": "Mamba3"}}, "Mamba3"),
        ({"ssm_cfg": {**TINY_SSM, "frobnicate": 1}}, "frobnicate"),
        ({"some_new_field": 1}, "some_new_field"),
    ],
)
def test_unrepresentable_settings_rejected(tmp_path, change, message):
    write(tiny_model("mamba2"), tmp_path, "mamba_ssm")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path))


def test_writer_refuses_what_mamba_ssm_cannot_express(tmp_path):
    model = tiny_model("mamba")
    model.config.layer_norm_epsilon = 1e-6
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        save_mamba_ssm_checkpoint(model, tmp_path)
    with pytest.raises(TypeError):
        save_mamba_ssm_checkpoint(torch.nn.Linear(2, 2), tmp_path)


def test_mamba_ssm_without_tokenizer_needs_gpt_neox(offline_hub, tmp_path):
    write(tiny_model("mamba"), tmp_path / "m", "mamba_ssm", tokenizer=False)
    with pytest.raises(OSError, match="EleutherAI/gpt-neox-20b") as err:
        load_model(str(tmp_path / "m"))
    assert "tokenizer=" in str(err.value)
    model, _ = load_model(str(tmp_path / "m"), tokenizer=tiny_tokenizer())  # the fix works
    assert isinstance(model, MambaForCausalLM)


# ------------------------------------------------------------------------------- references


def test_hub_id_offline_gives_clear_error(offline_hub):
    with pytest.raises(OSError) as err:
        load_model("state-spaces/mamba2-2.7b")
    msg = str(err.value)
    assert "state-spaces/mamba2-2.7b" in msg and "could not be downloaded" in msg
    assert "local directory" in msg and 'utrc.load_model("/path/to/dir")' in msg
    assert err.value.__cause__ is not None  # the hub's exception stays chained


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_model(str(missing))
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_model("./does-not-exist")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_not_a_mamba_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        load_model(str(tmp_path))


def test_unknown_demo_name():
    with pytest.raises(ValueError, match="demo:mamba2") as err:
        load_model("demo:nope")
    assert "demo:nope" in str(err.value) and "demo:mamba" in str(err.value)


def test_missing_demo_files(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "DEMO_DIR", tmp_path / "models")
    with pytest.raises(FileNotFoundError, match="missing from the installed package") as err:
        load_model("demo:mamba2")
    assert str(tmp_path / "models" / "mamba2") in str(err.value)


@pytest.mark.parametrize("name", ["mamba2", "mamba"])
def test_demo_models_load_when_built(name):
    if not (loading.DEMO_DIR / name / "config.json").is_file():
        pytest.skip("demo models not built yet (python -m demo.train)")
    model, tok = load_model(f"demo:{name}")
    assert type(model) is CLASSES[name] and not model.training
    assert len(tok("hello world").input_ids) > 0
