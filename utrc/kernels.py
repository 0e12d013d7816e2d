"""Which GPU kernel packages this process can use. mamba_ssm and causal_conv1d import CUDA
extensions, so on a CPU-only machine they cannot be imported at all (docs/method.md §7)."""

from __future__ import annotations

import functools

__all__ = ["is_causal_conv1d_available", "is_mamba_ssm_available"]


@functools.lru_cache(maxsize=1)
def is_mamba_ssm_available() -> bool:
    """True when `mamba_ssm` (with its CUDA extension) imports. Never raises: on a CPU-only machine
    the import fails with ImportError, OSError (no libcudart) or RuntimeError, all meaning "no"."""
    try:
        import mamba_ssm  # noqa: F401
        import selective_scan_cuda  # noqa: F401
    except Exception:  # ImportError, OSError, RuntimeError, and whatever a broken build raises
        return False
    return True


@functools.lru_cache(maxsize=1)
def is_causal_conv1d_available() -> bool:
    """True when `causal_conv1d` imports (torch first: its extension links against torch)."""
    try:
        import torch  # noqa: F401, I001  (torch first: the extension links against it)
        import causal_conv1d  # noqa: F401
    except Exception:
        return False
    return True
