"""The attention of the backbone and its steps, in timm's layout: q, k, v by ``Attention.heads``,
the map by ``AttentionMap``, ``Att v`` by ``ValueMix``, the output by ``Attention.out``."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtp_ref.layers import norm_layer, rotate

LN_EPS = 1e-6  # the DeiT / ViT factories' LayerNorm eps


class AttentionMap(nn.Module):
    """Att = softmax(q k^T / sqrt(d) + b + log s): q, k [B, H, N, d], sizes s [B, N] or None, a
    relative-position bias b [B or 1, H, N, N] or None -> [B, H, N, N].

    The scale multiplies q (N d products, as timm does), not the N^2 logits."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, token_sizes: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        return softmax_map(q * self.scale, k, token_sizes, bias)


def softmax_map(q: Tensor, k: Tensor, token_sizes: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T + b + log s) for q already scaled: q, k [B, H, N, d], sizes s [B, N] or None,
    bias b [B or 1, H, N, N] or None -> [B, H, N, N] (the attention map's one definition; the
    backends that compute it use it too)."""
    logits = q @ k.transpose(-2, -1)  # (B, H, N, N)
    if bias is not None:
        logits = logits + bias
    if token_sizes is not None:
        logits = logits + token_sizes.log()[:, None, None, :]  # + log s per key column
    return logits.softmax(dim=-1)


class ValueMix(nn.Module):
    """Att v with the heads concatenated: Att [B, H, N, N], v [B, H, N, d] -> [B, N, H d]."""

    def forward(self, attn: Tensor, v: Tensor) -> Tensor:
        out = attn @ v  # (B, H, N, d)
        B, H, N, d = out.shape
        return out.transpose(1, 2).reshape(B, N, H * d)


class Attention(nn.Module):
    """Multi-head self-attention with proportional attention: x [B, N, C] -> [B, N, C].

    Att = softmax(q k^T / sqrt(d_h) + log s), the log s per key column only with token sizes s.
    ``forward`` computes it fused (``scaled_dot_product_attention``, timm's default) or
    explicitly.  The token-reduction blocks call the steps themselves -- ``heads``, ``map``,
    ``mix``, ``out`` -- so that a block can change the map between them; each step is a module
    (``map`` and ``mix`` have no parameters), so ``gtp_ref.cost`` counts it as the backbone's.

    The variants of timm's EVA / RoPE attention: ``qkv_fused=False`` separate ``q_proj``,
    ``k_proj``, ``v_proj``; ``k_bias=False`` no bias on k (with a fused qkv: ``q_bias`` and
    ``v_bias`` beside a bias-free ``qkv``); ``qk_norm`` a norm of each head's q and k;
    ``attn_norm`` a norm of the heads' output before ``proj``; ``rope`` the layout of the rotary
    embedding that ``heads`` applies to the image tokens' q and k (``gtp_ref.layers.rotate``);
    ``kv_heads`` fewer k / v heads than q heads (grouped-query attention, separate projections).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, *, qkv_fused: bool = True, k_bias: bool = True,
                 qk_norm: bool = False, attn_norm: bool = False, proj_bias: bool = True, rope: str | None = None,
                 norm: str = "layernorm", norm_eps: float = LN_EPS, kv_heads: int | None = None) -> None:
        super().__init__()
        self.num_heads, self.rope, self.kv_heads = num_heads, rope, kv_heads or num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias and k_bias) if qkv_fused else None
        if qkv_fused and qkv_bias and not k_bias:  # EVA: q and v biases, none on k
            self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        if not qkv_fused:
            kv = self.kv_heads * head_dim
            self.q_proj, self.k_proj = nn.Linear(dim, dim, bias=qkv_bias), nn.Linear(dim, kv, bias=qkv_bias and k_bias)
            self.v_proj = nn.Linear(dim, kv, bias=qkv_bias)
        self.q_norm = norm_layer(norm, head_dim, norm_eps) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(norm, head_dim, norm_eps) if qk_norm else nn.Identity()
        self.map = AttentionMap(self.scale)
        self.mix = ValueMix()
        self.norm = norm_layer(norm, dim, norm_eps) if attn_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def heads(self, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, H, N, d] of x [B, N, C]; rope: the table rows [..., n, 2 d] of the last n
        tokens (the image tokens), which turn their q and k, or None."""
        B, N, C = x.shape
        H = self.num_heads
        if self.qkv is None:
            q, k, v = (p(x).reshape(B, N, -1, C // H).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        else:
            qkv = self.qkv(x)  # (B, N, 3 C); through the module, so that gtp_ref.cost counts it as the backbone's
            if hasattr(self, "q_bias"):  # EVA: + (q_bias, 0, v_bias)
                qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
            q, k, v = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # the prefix tokens are not turned
            c = N - rope.shape[-2]
            q, k = (torch.cat([t[:, :, :c], rotate(t[:, :, c:], rope, self.rope)], dim=2) for t in (q, k))
        if self.kv_heads != H:  # grouped-query attention: head h reads k / v head h // (H / kv_heads)
            k, v = (t.repeat_interleave(H // self.kv_heads, dim=1) for t in (k, v))
        return q, k, v

    def out(self, heads: Tensor) -> Tensor:
        """The heads' output [B, N, C] through ``norm`` (attn_norm) and ``proj``."""
        return self.proj(self.norm(heads))

    def forward(self, x: Tensor, token_sizes: Tensor | None = None, fused: bool = False,
                rope: Tensor | None = None, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Attn(x) [B, N, C], the keys k [B, H, N, d]); ``fused``: by scaled_dot_product_attention;
        rope: ``heads``'; bias: a relative-position bias of the logits [B or 1, H, N, N] or None."""
        q, k, v = self.heads(x, rope)  # (B, H, N, d)
        if fused:
            mask = None if token_sizes is None else token_sizes.log()[:, None, None, :]  # (B, 1, 1, N)
            mask = bias if mask is None else mask if bias is None else bias + mask
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, d)
            return self.out(out.transpose(1, 2).flatten(2)), k
        return self.out(self.mix(self.map(q, k, token_sizes, bias), v)), k
