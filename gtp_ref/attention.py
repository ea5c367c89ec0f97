"""The attention of the backbone and its steps, in timm's layout: q, k, v by ``Attention.heads``,
the map by ``AttentionMap``, ``Att v`` by ``ValueMix``, the output by ``Attention.out``."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtp_ref.config import ViTConfig
from gtp_ref.layers import norm_layer, rotate


class AttentionMap(nn.Module):
    """Att = softmax(q k^T / sqrt(d) + b + log s): q, k [B, H, N, d], sizes s [B, N] or None, a
    relative-position bias b [B or 1, H, N, N] or None -> [B, H, N, N].

    The scale multiplies q (N d products, as timm does), not the N^2 logits."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(
        self, q: Tensor, k: Tensor, token_sizes: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        return softmax_map(q * self.scale, k, token_sizes, bias)


def softmax_map(
    q: Tensor, k: Tensor, token_sizes: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    """softmax(q k^T + b + log s) for q already scaled: q, k [B, H, N, d], sizes s [B, N] or None,
    bias b [B or 1, H, N, N] or None -> [B, H, N, N] (the attention map's one definition; the
    backends that compute it use it too).

    In reduced precision (float16 / bfloat16 logits, with autocast or without) the map is float32:
    q k^T in its own dtype, then + b + log s and the softmax in float32 -- on the CPU as on CUDA,
    whose autocast runs the softmax in float32 (docs/spec.md, "Reduced precision")."""
    logits = q @ k.transpose(-2, -1)  # (B, H, N, N)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if bias is not None:
        logits = logits + bias
    if token_sizes is not None:
        logits = logits + token_sizes.log()[:, None, None, :]  # + log s per key column
    return logits.softmax(dim=-1)


class ValueMix(nn.Module):
    """Att v with the heads concatenated: Att [B, H, N, N], v [B, H, N, d] -> [B, N, H d]."""

    def forward(self, attn: Tensor, v: Tensor) -> Tensor:
        out = attn.to(v.dtype) @ v  # (B, H, N, d): a reduced-precision model's float32 map in v's dtype
        B, H, N, d = out.shape
        return out.transpose(1, 2).reshape(B, N, H * d)


class Attention(nn.Module):
    """Multi-head self-attention with proportional attention: x [B, N, C] -> [B, N, C].

    Att = softmax(q k^T / sqrt(d_h) + b + log s): the log s per key column only with token sizes s,
    b a relative-position bias where the model has one.  ``forward`` computes it with
    ``scaled_dot_product_attention`` (``fused_attn``, timm's default) or explicitly.  The
    token-reduction blocks call the steps themselves -- ``heads``, ``map``, ``mix``, ``out`` -- so
    that a block can change the map between them; each step is a module (``map`` and ``mix`` have
    no parameters), so ``gtp_ref.cost`` counts it as the backbone's.

    Its options are ``config.attention``'s (``gtp_ref.config.AttentionConfig``): one qkv projection
    or separate ``q_proj``, ``k_proj``, ``v_proj``; EVA's ``q_bias`` / ``v_bias`` beside a
    bias-free qkv; a norm of each head's q and k; a norm of the heads' output; rotary embeddings
    of the image tokens' q and k (``config.positions.rope``, ``gtp_ref.layers.rotate``); and
    ``kv_heads`` k / v heads (grouped-query attention).
    """

    def __init__(self, config: ViTConfig, kv_heads: int | None = None) -> None:
        super().__init__()
        a, dim = config.attention, config.embed_dim
        self.num_heads, self.kv_heads = a.num_heads, kv_heads or a.num_heads
        self.rope = config.positions.rope  # the layout of the rotation, or None
        head_dim = config.head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=a.qkv_bias and a.k_bias) if a.qkv_fused else None
        if a.qkv_fused and a.qkv_bias and not a.k_bias:  # EVA: q and v biases, none on k
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        if not a.qkv_fused:
            kv = self.kv_heads * head_dim
            self.q_proj = nn.Linear(dim, dim, bias=a.qkv_bias)
            self.k_proj = nn.Linear(dim, kv, bias=a.qkv_bias and a.k_bias)
            self.v_proj = nn.Linear(dim, kv, bias=a.qkv_bias)
        self.q_norm = norm_layer(config.norm, head_dim) if a.qk_norm else nn.Identity()
        self.k_norm = norm_layer(config.norm, head_dim) if a.qk_norm else nn.Identity()
        self.map = AttentionMap(self.scale)
        self.mix = ValueMix()
        self.norm = norm_layer(config.norm, dim) if a.attn_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=a.proj_bias)

    def heads(self, x: Tensor, rope_rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, H, N, d] of x [B, N, C]; rope_rows: the RoPE table's rows [..., n, 2 d] of the
        last n tokens (the image tokens), which turn their q and k, or None."""
        B, N, C = x.shape
        H = self.num_heads
        if self.qkv is None:
            q, k, v = (
                p(x).reshape(B, N, -1, C // H).transpose(1, 2)
                for p in (self.q_proj, self.k_proj, self.v_proj)
            )
        else:
            # (B, N, 3 C); through the module, so that gtp_ref.cost counts it as the backbone's
            qkv = self.qkv(x)
            if hasattr(self, "q_bias"):  # EVA: + (q_bias, 0, v_bias)
                qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
            q, k, v = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope_rows is not None:  # the prefix tokens are not turned
            c = N - rope_rows.shape[-2]
            q, k = (
                torch.cat([t[:, :, :c], rotate(t[:, :, c:], rope_rows, self.rope)], dim=2) for t in (q, k)
            )
        if self.kv_heads != H:  # grouped-query attention: head h reads k / v head h // (H / kv_heads)
            k, v = (t.repeat_interleave(H // self.kv_heads, dim=1) for t in (k, v))
        return q, k, v

    def out(self, heads: Tensor) -> Tensor:
        """The heads' output [B, N, C] through ``norm`` (attn_norm) and ``proj``."""
        return self.proj(self.norm(heads))

    def forward(
        self,
        x: Tensor,
        token_sizes: Tensor | None = None,
        fused_attn: bool = False,
        rope_rows: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(Attn(x) [B, N, C], the keys k [B, H, N, d]); ``fused_attn``: by scaled_dot_product_attention;
        rope_rows: ``heads``'; bias: a relative-position bias of the logits [B or 1, H, N, N] or None."""
        q, k, v = self.heads(x, rope_rows)  # (B, H, N, d)
        if not fused_attn:
            return self.out(self.mix(self.map(q, k, token_sizes, bias), v)), k
        mask = bias  # (B or 1, H, N, N) or None
        if token_sizes is not None:
            log_s = token_sizes.log()[:, None, None, :]  # (B, 1, 1, N)
            mask = log_s if mask is None else mask + log_s
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, d)
        return self.out(out.transpose(1, 2).flatten(2)), k
