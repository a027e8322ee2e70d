"""The plugin hooks of carlos-reg. Built-in features implement them exactly as third parties do.

A plugin is a module (or object) with functions decorated by ``registry.hookimpl``; third-party
plugins are found through the entry-point group ``carlos_reg``. Specs only ever grow: new
arguments are opt-in for implementations.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("carlos_reg")
hookimpl = pluggy.HookimplMarker("carlos_reg")


@hookspec
def register_commands(cli):
    """Add click commands or groups to the root ``cli`` group (``cli.add_command(...)``)."""


@hookspec
def lora_file_verified(app, session, version_id: int, file_id: int):
    """A LoRA file was downloaded and its SHA256 verified; queue work for it.

    Called inside the write transaction that records the verification (``session``), so work
    queued here commits together with it. ``app`` is the ``registry.app.App`` of the command.
    """


@hookspec
def register_retrievers(register):
    """Offer search retrievers: call ``register(retriever)`` for each.

    A retriever has a ``name``, a one-line ``description`` and
    ``rank(engine, request) -> (version_ids, scores, info)`` where ``engine`` is a
    ``signer.search.SearchEngine`` and ``request`` a ``signer.search.SearchRequest``; ``info`` is a dict merged
    into the JSON output (e.g. what was filtered and why).
    """


@hookspec
def register_reports(register):
    """Offer report kinds for ``carlos-reg report KIND``: call ``register(report)`` for each.

    A report subclasses ``registry.plugin_api.Report``: a ``name``, a ``description``, extra click
    ``options()``, ``build(app, refs, profile, **options) -> dict`` (the JSON document), and
    renderers for the table and HTML formats (defaults exist).
    """


@hookspec
def register_routes(web_app, app):
    """Add routes to the HTTP API: ``web_app`` is the aiohttp ``web.Application`` being built,
    ``app`` the registry ``App``. Keep long-lived state (models, indexes) on ``web_app``."""


@hookspec
def register_nightly_steps(register):
    """Offer steps of the scheduled crawl-and-index run: ``register(name, function, order)``.

    Steps run in ascending ``order``; ``function(app, options)`` returns a dict of counts (and
    may include ``"errors"``). ``options`` holds the ``serve`` flags (``sign_local``, ``device``, …)
    and a ``stop`` ``threading.Event`` set on shutdown.
    """
