"""utrc.source_hooks: an importance source is read from exactly one call of its module, or the
forward stops (a fused path that skips out_proj must never reduce on some other tensor)."""

import pytest
import torch

from utrc.source_hooks import module_inputs


class Mixer(torch.nn.Module):
    def __init__(self, calls: int):
        super().__init__()
        self.out_proj = torch.nn.Linear(4, 4)
        self.calls = calls

    def forward(self, x):
        for _ in range(self.calls):
            x = self.out_proj(x * 2)
        return x


def test_reads_the_input_of_the_one_call():
    mixer, x = Mixer(calls=1), torch.randn(2, 4)
    with module_inputs(mixer, ["ssm_output"]) as found:
        mixer(x)
    assert torch.equal(found["ssm_output"], x * 2)
    assert not mixer.out_proj._forward_pre_hooks  # the hook lived for that call only


@pytest.mark.parametrize("calls", [0, 2])
def test_a_module_skipped_or_called_twice_is_an_error(calls):
    mixer = Mixer(calls=calls)
    with pytest.raises(RuntimeError, match=f"called out_proj {calls} times instead of once"):
        with module_inputs(mixer, ["ssm_output"]):
            mixer(torch.randn(2, 4))
    assert not mixer.out_proj._forward_pre_hooks


def test_a_mixer_without_the_module_names_it():
    with pytest.raises(RuntimeError, match="has no 'norm': it has no scan_output"):
        with module_inputs(Mixer(calls=1), ["scan_output"]):
            pass
