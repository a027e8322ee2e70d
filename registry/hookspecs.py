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
    ``rank(engine, request) -> (version_ids, scores, info)`` where ``engine`` is the search
    plugin's ``SearchEngine`` and ``request`` its ``SearchRequest``; ``info`` is a dict merged
    into the JSON output (e.g. what was filtered and why).
    """


@hookspec
def register_reports(register):
    """Offer report kinds for ``carlos-reg report KIND``: call ``register(report)`` for each.

    A report subclasses ``plugins.reports.Report``: a ``name``, a ``description``, extra click
    ``options()``, ``build(app, refs, profile, **options) -> dict`` (the JSON document), and
    renderers for the table and HTML formats (defaults exist).
    """
