"""Reading an importance source where docs/method.md §1 defines it: the first input of one of the
mixer's modules (`out_proj` for `ssm_output`, Mamba-2's gated `norm` for `scan_output`), through
forward pre-hooks that live for one mixer call. Both execution paths read sources this way where
the mixer does not return them itself."""

from __future__ import annotations

import contextlib

SOURCE_MODULES = {"ssm_output": "out_proj", "scan_output": "norm"}


@contextlib.contextmanager
def module_inputs(mixer, sources):
    """Hooks for each source named (all keys of SOURCE_MODULES) around one mixer call; yields a dict
    filled with {source: tensor} when the block exits. Each module must be called exactly once:
    a forward that skips it (a fused kernel path) or calls it twice is an error, never a reduction
    on the wrong tensor."""
    seen: dict[str, list] = {name: [] for name in sources}
    found: dict = {}
    handles = []
    try:
        for name, log in seen.items():
            module = getattr(mixer, SOURCE_MODULES[name], None)
            if module is None:
                raise RuntimeError(f"{type(mixer).__name__} has no {SOURCE_MODULES[name]!r}: it has no {name}")
            handles.append(module.register_forward_pre_hook(lambda _m, args, log=log: log.append(args[0])))
        yield found
    finally:
        for handle in handles:
            handle.remove()
    for name, log in seen.items():
        if len(log) != 1:
            raise RuntimeError(
                f"could not read the {name} of {type(mixer).__name__}: its forward called "
                f"{SOURCE_MODULES[name]} {len(log)} times instead of once (a fused kernel path?); "
                "the policy cannot be applied"
            )
        found[name] = log[0]
