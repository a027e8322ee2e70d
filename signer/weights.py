"""Are a profile's model weights on this machine? Answered without importing torch.

``check_weights(profile)`` raises ``ModelUnavailable`` with one line naming the profile, the exact
weights (Hub repository or file) and the ways to provide them; commands call it before they load
anything heavy, so a missing model costs a second instead of the import of torch and diffusers.
"""

from __future__ import annotations

import os
from pathlib import Path

from signer.errors import ModelUnavailable
from signer.profiles import Profile


def _diffusers_folder_present(location: str) -> bool:
    """A local diffusers folder, or a Hub id whose snapshot is in the Hugging Face cache."""
    if os.path.isdir(location):
        return (Path(location) / "model_index.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(location, "model_index.json")
    return isinstance(found, str) and os.path.isfile(found)


def check_weights(profile: Profile) -> None:
    """Raise ``ModelUnavailable`` when the SDXL pipeline or the CLIP weights of ``profile`` are missing
    and may not be downloaded. The tiny profile builds its models locally and always passes."""
    from signer.clip import find_clip_weights

    if profile.is_tiny:
        return
    if not profile.allow_download and not _diffusers_folder_present(profile.base_model_location):
        where = profile.base_model_location
        hint = (
            f"the folder {where} is not a diffusers pipeline (no model_index.json)"
            if os.path.isdir(where)
            else f"the Hugging Face Hub repository {where} is not in the local Hub cache"
        )
        raise ModelUnavailable(
            f"profile {profile.name!r} needs the SDXL weights {profile.settings['base_model']}: {hint}. Download "
            f"that repository (diffusers layout, fp16 variant is enough) and set CARLOS_REG_SDXL=/path/to/it "
            f"(or base_model_path in profiles.toml), or allow a one-time download with CARLOS_REG_ALLOW_DOWNLOAD=1"
        )
    find_clip_weights(profile)
