"""What a LoRA's metadata claims it does, as text: trigger words, name and tags, cleaned.

Names on Civitai carry noise that says nothing about behavior — versions ("v2.1"), base
models ("SDXL", "Pony", "XL"), adapter words ("LoRA", "LyCORIS"), credits ("by EDG"), and
separators. Removing it leaves the words that describe the effect.
"""

from __future__ import annotations

import re

_NOISE = [
    r"\bv(?:er(?:sion)?)?\s*\.?\s*\d+(?:\.\d+)*[a-z]?\b",  # v2, v1.5, ver 3, version 2
    r"\b\d+(?:\.\d+)+\b",  # 1.0, 2.1.3
    r"\b(?:sd\s*xl|sdxl|sd\s*1\.?5|sd1\.?5|sd\s*2\.?1|xl|pony(?:\s*xl|\s*diffusion)?|illustrious(?:\s*xl)?|"
    r"noob\s*ai(?:\s*xl)?|animagine(?:\s*xl)?|flux(?:\.1)?(?:[\s-]*(?:dev|schnell|d|s))?|turbo|lightning|"
    r"hyper|lcm|base|sd)\b",
    r"\b(?:lora|loras|locon|lycoris|loha|lokr|dora|lyco|checkpoint|model|adapter|slider|sliders|finetune|"
    r"trained|training|trigger(?:\s*words?)?|no\s*trigger|notrigger|for|with|and|by|the|a|an|of)\b",
]
_NOISE_RE = [re.compile(p, re.I) for p in _NOISE]
_ADAPTER_WORDS = re.compile(r"(?<![A-Za-z])(?:lora|locon|lycoris|loha|lokr|dora)(?![a-z])", re.I)
_SEPARATORS = re.compile(r"[|/\\()\[\]{}<>:;_~+=*#@!?\"“”'`^–—-]+")


def clean_claim_text(text: str) -> str:
    out = text or ""
    out = re.sub(r"\bby\s+[\w.-]+", " ", out, flags=re.I)
    out = re.sub(r"https?://\S+|\b[\w-]+\.(?:com|xyz|ai|io|net|org)\b", " ", out, flags=re.I)
    out = _ADAPTER_WORDS.sub(" ", out)  # before camel-case splitting, which would cut "LoRA"
    out = re.sub(
        r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", out
    )  # ColoringBook -> Coloring Book
    out = re.sub(r"(?<=[A-Za-z])\.(?=[A-Za-z])", " ", out)  # Stickers.Redmond -> Stickers Redmond
    out = _SEPARATORS.sub(" ", out)
    for rx in _NOISE_RE:
        out = rx.sub(" ", out)
    out = re.sub(r"[^\w\s,&'.-]", " ", out)  # emoji and other symbols
    words, seen = [], set()
    for w in re.split(r"[\s,]+", out):
        w = w.strip(".,&'-").lower()
        if len(w) < 2 or w.isdigit() or w in seen:
            continue
        seen.add(w)
        words.append(w)
    return " ".join(words)


def claim_text(name: str, trained_words: list[str], tags: list[str], max_words: int = 24) -> str:
    """Trigger words first (what the author tells users to type), then the cleaned name, then tags."""
    words = [
        w for w in trained_words or [] if isinstance(w, str)
    ]  # entries as stored; cleaned here
    parts = [
        clean_claim_text(", ".join(words)),
        clean_claim_text(name),
        clean_claim_text(", ".join(tags or [])),
    ]
    words, seen = [], set()
    for part in parts:
        for w in part.split():
            if w not in seen:
                seen.add(w)
                words.append(w)
    return " ".join(words[:max_words])
