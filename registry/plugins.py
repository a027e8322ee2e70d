"""The plugin host: one pluggy manager, the built-in plugin list, entry-point loading.

Built-in features (including crawl and sign) are ordinary plugins named in ``DEFAULT_PLUGINS``;
the registry refers to them by module name only and never imports them directly. Third-party
plugins come through the entry-point group ``carlos_reg``.

``CARLOS_REG_LOAD_PLUGINS=a,b`` loads only the named plugins (built-in or third-party) besides
the essential ones; an empty value loads only the essential ones.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from typing import Any, Callable, TypeVar

import pluggy

from registry import hookspecs
from registry.errors import CarlosError
from registry.output import clean
from registry.settings import environment

GROUP = "carlos_reg"

# name -> module; the order is the order commands appear in.
DEFAULT_PLUGINS: dict[str, str] = {
    "db": "registry.commands.db",
    "plugins": "registry.commands.plugins_cmd",
    "listing": "registry.commands.listing",
    "import": "registry.commands.import_cmd",
    "export": "registry.commands.exchange",
    "serve": "registry.commands.serve",
    "crawl": "crawler.commands",
    "sign": "signer.commands",
    "search": "plugins.search",
    "metadata-search": "plugins.metadata_search",
    "reports": "plugins.reports",
    "compare": "plugins.compare",
    "library": "plugins.library",
    "demo": "plugins.demo",
    "web": "plugins.web",
}
ESSENTIAL_PLUGINS = frozenset({"db", "plugins"})

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)

_loaded = False
_load_errors: list[str] = []


def _wanted() -> set[str] | None:
    raw = environment().get("CARLOS_REG_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def load_plugins(*, entrypoints: bool = True) -> None:
    """Register the built-ins and installed plugins once (idempotent, never at import time)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    wanted = _wanted()
    for name, module_name in DEFAULT_PLUGINS.items():
        if wanted is not None and name not in wanted and name not in ESSENTIAL_PLUGINS:
            continue
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(module_name), name=name)
    if entrypoints:
        for ep in importlib.metadata.entry_points(group=GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # one broken plugin must not take the CLI down
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                _load_errors.append(msg)
                print(f"Warning: {clean(msg)}", file=sys.stderr)
    pm.check_pending()


T = TypeVar("T")


def _first(item: T, *_args: Any, **_kwargs: Any) -> T:
    return item


def collect(hook_name: str, entry: Callable[..., T] = _first) -> list[T]:
    """What plugins offer through a ``register_*`` hook, in registration order.

    The hook is called with one keyword, ``register``; every call a plugin makes to it becomes
    ``entry(*args, **kwargs)`` (by default its first argument).
    """
    load_plugins()
    found: list[T] = []

    def register(*args: Any, **kwargs: Any) -> None:
        found.append(entry(*args, **kwargs))

    getattr(pm.hook, hook_name)(register=register)
    return found


def collect_named(hook_name: str, kind: str) -> dict[str, Any]:
    """Like ``collect``, keyed by each object's ``name``; an empty or repeated name is refused."""
    named: dict[str, Any] = {}
    for item in collect(hook_name):
        name = getattr(item, "name", "")
        if not name or name in named:
            raise CarlosError(
                f"each {kind} needs a unique name; {name!r} is empty or registered twice"
            )
        named[name] = item
    return named


def load_errors() -> list[str]:
    return list(_load_errors)


def get_plugins() -> list[dict[str, Any]]:
    """Loaded plugins with the hooks each implements."""
    out = []
    dists = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP:
                dists[ep.name] = (dist.metadata["Name"], dist.version)
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        info: dict[str, Any] = {
            "name": name,
            "module": getattr(plugin, "__name__", repr(plugin)),
            "builtin": name in DEFAULT_PLUGINS,
            "hooks": hooks,
        }
        if name in dists:
            info["distribution"], info["version"] = dists[name]
        elif info["builtin"]:
            from registry import __version__

            info["distribution"], info["version"] = "carlos-reg", __version__
        out.append(info)
    return out
