"""The signer: behavioral signatures of SDXL LoRAs (CARLoS: Direction, Strength, Consistency).

Layers, from the inside out:
- numerical core, importable with only torch, diffusers and open_clip (no registry database):
  ``prompts`` (prompt sets), ``profiles`` (settings), ``tiny`` (random-weight pipelines),
  ``clip`` (CLIP encoder), ``validate`` (file screening), ``maths`` (signature statistics),
  ``engine`` (paired generation on one loaded pipeline), ``lorafiles`` (synthetic LoRA files);
- registry side: ``queueing`` (what gets a job, what it is signed from), ``results`` (base
  caches, signatures, sample images), ``local_loras`` (local files as registry entries),
  ``worker`` (leased jobs; ``claiming``, ``heartbeat``), ``commands`` (the ``sign`` and ``signer``
  CLI, a built-in plugin; ``sign_command``, ``profile_commands``, ``cli_support``).

Importing this package imports nothing heavy.
"""
