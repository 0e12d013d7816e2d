"""Tiny random Mamba / Mamba-2 models built from transformers' real modules.

Norm weights are randomised: with transformers' all-ones init, Mamba-2's gated RMSNorm gives every
token the same `l2` score and importance rankings become float noise.
"""

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

VOCAB = 64


def tiny_config(architecture: str, n_layer: int = 4, d_model: int = 32):
    if architecture == "mamba2":
        return Mamba2Config(
            vocab_size=VOCAB,
            hidden_size=d_model,
            num_hidden_layers=n_layer,
            expand=2,
            head_dim=16,
            num_heads=2 * d_model // 16,
            state_size=8,
            n_groups=1,
            chunk_size=8,  # several chunks even in short test sequences
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    if architecture == "mamba":
        return MambaConfig(
            vocab_size=VOCAB,
            hidden_size=d_model,
            num_hidden_layers=n_layer,
            expand=2,
            state_size=8,
            time_step_rank=4,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    raise ValueError(architecture)


def tiny_model(architecture: str, seed: int = 0, n_layer: int = 4, d_model: int = 32):
    torch.manual_seed(seed)
    cls = Mamba2ForCausalLM if architecture == "mamba2" else MambaForCausalLM
    model = cls(tiny_config(architecture, n_layer, d_model)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    return model


@pytest.fixture(params=["mamba2", "mamba"])
def architecture(request):
    return request.param


@pytest.fixture
def model(architecture):
    return tiny_model(architecture)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
