"""The signer: behavioral signatures of SDXL LoRAs (CARLoS: Direction, Strength, Consistency).

Layers, from the inside out:
- numerical core, importable with only torch, diffusers and open_clip (no registry database):
  ``prompts`` (prompt sets), ``profiles`` (settings), ``tiny`` (random-weight pipelines),
  ``clip`` (CLIP encoder), ``validate`` (file screening), ``maths`` (signature statistics),
  ``engine`` (paired generation on one loaded pipeline), ``lorafiles`` (synthetic LoRA files);
- registry side: ``store`` (base cache, signatures, local files), ``worker`` (leased jobs),
  ``commands`` (the ``sign`` and ``signer`` CLI, a built-in plugin).

Importing this package imports nothing heavy.
"""
