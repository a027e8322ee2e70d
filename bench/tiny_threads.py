"""Tiny-profile signing on a CPU with N torch threads: base branch and one LoRA, wall seconds.

    python bench/tiny_threads.py 1     # what the engine uses for the tiny profile on a CPU
    python bench/tiny_threads.py 2     # torch's default on a 2-core machine

Run each in a fresh process (torch fixes its thread pool on first use). Builds the tiny models under
$CARLOS_REG_MODELS (default /tmp/tinymodels) on first use.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CARLOS_REG_MODELS", "/tmp/tinymodels")
os.environ["OMP_NUM_THREADS"] = (
    sys.argv[1] if len(sys.argv) > 1 else "1"
)  # the engine then leaves it alone

import torch  # noqa: E402

from signer import lorafiles as lf  # noqa: E402
from signer.engine import Engine  # noqa: E402
from signer.tiny import ensure_tiny_sdxl  # noqa: E402
from tests.signer_support import tiny_profile  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
ensure_tiny_sdxl(Path(os.environ["CARLOS_REG_MODELS"]))
engine = Engine(tiny_profile())
t = time.perf_counter()
base = engine.base_branch()
base_s = time.perf_counter() - t
lora = lf.write_kohya_lora(Path(tempfile.mkdtemp()) / "l.safetensors", strength=0.5, seed=3)
t = time.perf_counter()
engine.sign_lora(lora, ["w"], base)
print(
    f"threads {torch.get_num_threads()}: base branch {base_s:.1f} s, one LoRA {time.perf_counter() - t:.1f} s "
    f"({len(engine.samples)} samples each)"
)
