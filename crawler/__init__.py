"""carlos-reg crawler: Civitai client, sync into the registry, verified downloads, mirror server.

Builds on ``registry`` (never the reverse) and never imports ``signer`` or ``plugins``; work for
a newly verified file is handed over through the ``lora_file_verified`` hook.

Modules: ``client`` (HTTP with retries, redirects and token hygiene), ``parse`` (tolerant payload
parsing), ``registry_writer`` (registry writes; a page's upsert in ``catalog_upsert``, its rows in
``catalog_rows``), ``sync`` (the crawl; with ``crawl_types``, ``run_record``, ``ingest`` and
``model_lookups``), ``download`` (files), ``stfile`` (safetensors header checks), ``mirror`` (a
Civitai-compatible server and its directory format), ``commands`` (the CLI plugin).
"""
