"""The signer's errors: one clear line each, shown by the CLI without a traceback.

They subclass ``registry.errors.CarlosError``. The numerical core must also run where only
torch, diffusers and open_clip are installed (the GPU benchmark machine), so when the registry
package cannot be imported a plain ``Exception`` base stands in.
"""

from __future__ import annotations

try:
    from registry.errors import CarlosError
    from registry.errors import ModelUnavailable as _MissingWeights
except ImportError:  # registry's own dependencies (pluggy) missing: benchmark-only environment

    class CarlosError(Exception):  # type: ignore[no-redef]
        exit_code = 1

    class _MissingWeights(CarlosError):  # type: ignore[no-redef]
        pass


class SignerError(CarlosError):
    """Anything the signer refuses or cannot do, explained."""


class ModelUnavailable(SignerError, _MissingWeights):
    """Weights a profile needs are not on this machine (and downloads are not allowed)."""


class ProfileError(SignerError):
    """A profile name or a profiles.toml entry that cannot be resolved."""


class LoraRejected(SignerError):
    """A LoRA file that cannot be signed; the message is the reason recorded for the job."""


class Interrupted(SignerError):
    """SIGTERM/SIGINT or a lost lease stopped the work between two UNet steps."""

    exit_code = 130
