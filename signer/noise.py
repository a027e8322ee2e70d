"""Initial noise of a sample, laid out as the reference implementation draws it.

The reference calls the pipeline once per 4 images of a prompt with ``generator=torch.manual_seed(s)``,
s = 42, 46, 50, 54: diffusers then draws one standard-normal batch of shape (4, C, H/f, W/f) in the
pipeline's dtype (float16) from that CPU generator. Image i of a prompt is row i % 4 of the batch drawn
with seed 42 + 4·(i // 4). We draw the same batch here and hand each sample its row through
``latents=``, so our own batching (8 different (prompt, image) pairs per UNet call) keeps the
reference's noise exactly. With ``noise_batch = 1`` the layout is one generator per image.

The draw is the scheduler-independent standard normal; the pipeline scales it by
``init_noise_sigma`` itself, exactly as it does for noise it draws.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache


def noise_slot(image: int, *, start: int, batch: int) -> tuple[int, int]:
    """(generator seed, row) of image ``image`` of a prompt."""
    return start + batch * (image // batch), image % batch


@lru_cache(maxsize=8)
def _draw(seed: int, rows: int, shape: tuple[int, ...], dtype_name: str):
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(
        (rows, *shape),
        generator=generator,
        device="cpu",
        dtype=getattr(torch, dtype_name),
        layout=torch.strided,
    )


def sample_noise(seed: int, row: int, *, rows: int, shape: tuple[int, ...], dtype: str = "float16"):
    """The standard-normal initial latent (C, h, w) of one sample, on the CPU."""
    return _draw(seed, rows, tuple(shape), dtype)[row]


def noise_sha256(noise) -> str:
    """SHA-256 of a latent as float16, C-contiguous bytes (how ``signer samples`` identifies noise)."""
    import torch

    return hashlib.sha256(noise.to(torch.float16).contiguous().numpy().tobytes()).hexdigest()
