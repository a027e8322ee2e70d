"""A loaded LoRA merged into the base weights for generation, and the base weights restored
exactly afterwards (docs/architecture.md, The method: the adapter adds no work per UNet step).

Contract:
- ``fuse_adapter(pipe, adapter, scale, pristine)`` first saves every weight the adapter's layers
  touch into ``pristine`` (``id(param) -> (param, base value)``; once per process: the base
  weights never change), then merges the adapter at ``scale`` and takes the adapter layers out
  again, so generation runs the plain base modules, the same module tree for every LoRA (a
  compiled UNet does not recompile). Returns None, or why it could not fuse (NaN weights refused
  by the safe merge, for instance); then whatever was merged is restored and the adapter stays.
- ``restore_weights(pipe, pristine)`` writes every saved weight back bit for bit (peft's unmerge
  subtracts, which is not exact) and clears peft's record of merged adapters.
"""

from __future__ import annotations

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def _adapter_layers(model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (
        [m for m in model.modules() if isinstance(m, BaseTunerLayer)] if model is not None else []
    )


def _save_pristine(layers, pristine: dict) -> None:
    import torch

    with torch.no_grad():
        for layer in layers:
            for param in layer.get_base_layer().parameters(recurse=False):
                if id(param) not in pristine:
                    pristine[id(param)] = (param, param.detach().clone())


def fuse_adapter(pipe, adapter: str, scale: float, pristine: dict) -> str | None:
    """Merge ``adapter`` into the weights (saving what it touches first); None, or why not."""
    components = []
    for name in COMPONENTS:
        layers = _adapter_layers(getattr(pipe, name, None))
        if layers:
            components.append(name)
        _save_pristine(layers, pristine)
    try:
        pipe.fuse_lora(
            components=components, lora_scale=scale, safe_fusing=True, adapter_names=[adapter]
        )
    except Exception as exc:  # e.g. NaN weights (safe_fusing): restore whatever was merged
        restore_weights(pipe, pristine)
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    pipe.unload_lora_weights()  # the wrappers go; their base modules keep the merged weights
    pipe._merged_adapters = set()
    return None


def restore_weights(pipe, pristine: dict) -> None:
    """Every weight a fused LoRA touched back to its saved base value, exactly."""
    import torch

    with torch.no_grad():
        for param, value in pristine.values():
            param.copy_(value)
    for name in COMPONENTS:
        for layer in _adapter_layers(getattr(pipe, name, None)):
            layer.merged_adapters.clear()  # the adapter is no longer in the weights
    pipe._merged_adapters = set()
