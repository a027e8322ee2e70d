"""Exact, fast CLIP text features for reciprocal query vectors.

The query vector (docs/architecture.md, The method) needs ``u(p + " " + q)`` for every prompt ``p`` of P'. Two exact
shortcuts, both resting on the text tower being *causal* and pooling at the end token:

- **Cut length.** Padding after the end token cannot influence any position up to it, so a
  batch is cut to its longest real token sequence instead of 77 positions.
- **Prefix reuse.** ``p + " " + q`` tokenizes as ``tokens(p) + tokens(q)`` (CLIP's BPE never
  merges across whitespace; checked per prompt, with a fallback), and positions of ``p`` never
  see those of ``q``. So each layer's keys and values for ``<sot> p`` are computed once and
  kept; a query only runs its own few suffix tokens through the tower, attending to them.

Both give the same features as open_clip's ``encode_text`` up to float rounding; the tests
compare them. Models whose blocks are not open_clip's standard ``ResidualAttentionBlock`` or
that do not pool at the end token use the cut-length path only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def _standard_blocks(model) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    return bool(blocks) and all(
        type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in blocks
    )


@dataclass
class _Bucket:
    """Prompts whose ``<sot> p`` prefixes have the same length, with each layer's keys/values."""

    length: int
    index: torch.Tensor  # positions of these prompts in the prompt list
    tokens: torch.Tensor  # [B, length]
    keys: list = field(default_factory=list)  # per layer [B, heads, length, head_dim]
    values: list = field(default_factory=list)


class PrefixCache:
    def __init__(self, prompts: list[str], buckets: list[_Bucket]):
        self.prompts = prompts
        self.buckets = buckets

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for b in self.buckets for t in (*b.keys, *b.values))


class TextTower:
    """open_clip text tower run without its 77-token padding."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = int(model.positional_embedding.shape[0])
        self.eot = int(getattr(tokenizer, "eot_token_id", 49407))
        pool = getattr(model, "text_pool_type", "argmax")
        self.pools_at_eot = pool in ("argmax", "eos")
        self.supports_prefix = (
            self.pools_at_eot and _standard_blocks(model) and hasattr(model, "attn_mask")
        )

    @property
    def device(self) -> torch.device:
        return self.model.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.transformer.get_cast_dtype()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    # ------------------------------------------------------------------ cut length

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Raw text features of ``texts`` (same as ``model.encode_text``), cut to the longest real length."""
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(self.encode_tokens(self.tokenize(texts[i : i + batch_size])))
        return torch.cat(out) if out else torch.empty(0, self.model.text_projection.shape[-1])

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.pools_at_eot or not hasattr(self.model, "attn_mask"):
            return self.model.encode_text(tokens)
        eot_pos = tokens.argmax(dim=-1)
        length = int(eot_pos.max()) + 1
        m = self.model
        x = m.token_embedding(tokens[:, :length]).to(self.dtype) + m.positional_embedding[
            :length
        ].to(self.dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        return self._project(x[torch.arange(x.shape[0], device=x.device), eot_pos])

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.model.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj

    # ------------------------------------------------------------------ prefix reuse

    def _split_heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, e = t.shape
        return t.view(b, n, heads, e // heads).transpose(1, 2)

    def _block(self, block, x: torch.Tensor, past_k=None, past_v=None):
        """One residual attention block for new positions ``x`` attending to cached ones; returns new k, v too."""
        attn = block.attn
        heads = attn.num_heads
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (self._split_heads(t, heads) for t in (q, k, v))
        keys = k if past_k is None else torch.cat([past_k, k], dim=2)
        vals = v if past_v is None else torch.cat([past_v, v], dim=2)
        n_new, n_all = q.shape[2], keys.shape[2]
        # new position i sits at n_all - n_new + i and may see every position up to itself
        allowed = torch.ones(n_new, n_all, dtype=torch.bool, device=x.device).tril(
            diagonal=n_all - n_new
        )
        a = F.scaled_dot_product_attention(q, keys, vals, attn_mask=allowed)
        a = attn.out_proj(a.transpose(1, 2).reshape(x.shape[0], n_new, -1))
        x = x + block.ls_1(a)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, k, v

    @torch.no_grad()
    def prepare_prefixes(self, prompts: list[str]) -> PrefixCache:
        """Run every ``<sot> prompt`` once and keep each layer's keys and values, bucketed by length."""
        if not self.supports_prefix:
            raise ValueError("this text tower does not support prefix reuse")
        tokens = self.tokenize(prompts)
        lengths = tokens.argmax(dim=-1)  # position of the end token = length of "<sot> p"
        buckets = []
        m = self.model
        for length in sorted(set(lengths.tolist())):
            index = (lengths == length).nonzero().flatten()
            bucket = _Bucket(length=length, index=index, tokens=tokens[index, :length])
            x = m.token_embedding(bucket.tokens).to(self.dtype) + m.positional_embedding[
                :length
            ].to(self.dtype)
            for block in m.transformer.resblocks:
                x, k, v = self._block(block, x)
                bucket.keys.append(k)
                bucket.values.append(v)
            buckets.append(bucket)
        return PrefixCache(list(prompts), buckets)

    @torch.no_grad()
    def encode_with_suffix(self, cache: PrefixCache, suffix: str) -> torch.Tensor:
        """``u(p + " " + suffix)`` for every prompt of the cache, in prompt order."""
        m = self.model
        n = len(cache.prompts)
        full = self.tokenize([p + " " + suffix for p in cache.prompts])
        out = torch.empty(
            n, self.model.text_projection.shape[-1], dtype=self.dtype, device=self.device
        )
        fallback = torch.ones(n, dtype=torch.bool, device=self.device)
        for b in cache.buckets:
            rows = full[b.index]
            end = rows.argmax(dim=-1)
            s_len = int(end.max()) + 1 - b.length
            same = (rows[:, : b.length] == b.tokens).all(dim=1) & (end == end[0])
            if s_len <= 0 or not bool(same.all()) or int(end[0]) + 1 >= self.context_length:
                continue  # truncated by the context or tokenized across the boundary: exact path below
            suffix_tokens = rows[:1, b.length : b.length + s_len].expand(len(b.index), -1)
            pos = m.positional_embedding[b.length : b.length + s_len].to(self.dtype)
            x = m.token_embedding(suffix_tokens).to(self.dtype) + pos
            for block, k, v in zip(m.transformer.resblocks, b.keys, b.values):
                x, _, _ = self._block(block, x, k, v)
            x = m.ln_final(x)
            out[b.index] = self._project(x[:, -1])
            fallback[b.index] = False
        if bool(fallback.any()):
            idx = fallback.nonzero().flatten()
            out[idx] = self.encode_tokens(full[idx])
        return out
