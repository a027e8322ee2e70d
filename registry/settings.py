"""Settings from the environment and the global CLI flags.

Environment: CARLOS_REG_HOME (data dir), CARLOS_REG_DB (SQLAlchemy URL), CIVITAI_API_KEY,
CIVITAI_BASE_URL, CARLOS_REG_PROFILE (the signer profile new files are queued for; default paper),
CARLOS_REG_PREVIEWS (how web pages show the authors' Civitai preview images: off, link or show;
default off). Flags ``--home`` and ``--db`` win over the environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CIVITAI_BASE_URL = "https://civitai.com"
DEFAULT_PROFILE = "paper"
# The one rule for the profile a command uses, shown in every --profile help.
PROFILE_HELP = ("Signer profile [default: $CARLOS_REG_PROFILE, else paper; commands that read signatures use the "
                "profile with the most signatures when that one has none].")


def default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("carlos-reg", appauthor=False))


class Secret:
    """A string that never shows itself in str(), repr() or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def get(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret(None)"

    __str__ = __repr__


@dataclass
class Settings:
    home: Path
    db_url: str
    civitai_base_url: str = DEFAULT_CIVITAI_BASE_URL
    civitai_api_key: Secret = field(default_factory=lambda: Secret(None))
    default_profile: str = DEFAULT_PROFILE
    verbose: int = 0
    previews: str = "off"

    @classmethod
    def load(cls, home: str | os.PathLike | None = None, db: str | None = None, verbose: int = 0) -> "Settings":
        home_path = Path(home or os.environ.get("CARLOS_REG_HOME") or default_home()).expanduser()
        db_url = db or os.environ.get("CARLOS_REG_DB") or f"sqlite:///{home_path / 'registry.db'}"
        return cls(
            home=home_path,
            db_url=db_url,
            civitai_base_url=(os.environ.get("CIVITAI_BASE_URL") or DEFAULT_CIVITAI_BASE_URL).rstrip("/"),
            civitai_api_key=Secret(os.environ.get("CIVITAI_API_KEY")),
            default_profile=os.environ.get("CARLOS_REG_PROFILE") or DEFAULT_PROFILE,
            verbose=verbose,
            previews=(os.environ.get("CARLOS_REG_PREVIEWS") or "off").strip().lower(),
        )

    @property
    def artifacts_dir(self) -> Path:
        """Content-addressed store for LoRA files, ensembles and caches."""
        return self.home / "artifacts"

    @property
    def artifacts(self):
        from registry.artifacts import ArtifactStore

        return ArtifactStore(self.artifacts_dir)
