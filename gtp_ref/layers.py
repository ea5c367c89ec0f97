"""The backbone's interchangeable parts: norms, activations, MLPs, layer scale and rotary position
embeddings (RoPE), each in timm's parameter layout so that timm's weights load unchanged.

RoPE here is a *table*: one row of sines and cosines per patch position (``[..., n, 2 d]``, the
sines then the cosines, as timm's ``get_embed`` returns them), rotating each image token's query
and key by the row of the patch it started as.  GTP removes tokens and never moves one, so a
kept token keeps its row (``gtp_ref.model`` gathers the rows of the tokens left in each block).
"""

import torch
from torch import Tensor, nn

from gtp_ref.config import MLPConfig, NormConfig, ViTConfig

# Parts of timm ViT checkpoints that this model does not have, by a key component they carry.
FOREIGN_KEYS = {
    "ls1": "layer scale (DeiT-III style ls1 / ls2)",
    "ls2": "layer scale (DeiT-III style ls1 / ls2)",
    "reg_token": "register tokens",
    "dist_token": "a distillation token (distilled DeiT)",
    "head_dist": "a distillation head (distilled DeiT)",
    "norm_pre": "a norm before the blocks (CLIP-style)",
    "q_norm": "query / key normalisation",
    "k_norm": "query / key normalisation",
    "attn_pool": "attention pooling (global_pool='map')",
    "backbone": "a convolutional stem (hybrid ViT)",
    "cls_token": "a [CLS] token",
    "fc_norm": "a LayerNorm after pooling (fc_norm)",
    "norm": "a LayerNorm before pooling (norm)",
    "rope_table": "rotary position embeddings (rope)",
    "q_bias": "q / v biases beside a bias-free qkv (EVA)",
    "q_proj": "separate q / k / v projections",
    "fc1_g": "a SwiGLU MLP",
    "pos_embed": "a learned position embedding",
}


class RmsNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension (timm's RmsNorm): [..., C] -> [..., C]."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class QuickGELU(nn.Module):
    """x sigmoid(1.702 x): OpenAI CLIP's approximation of GELU."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def norm_layer(norm: NormConfig, dim: int) -> nn.Module:
    """The config's kind of norm over ``dim`` channels: a LayerNorm (weight and bias) or an RmsNorm
    (weight), with its eps."""
    return (
        nn.LayerNorm(dim, eps=norm.norm_eps) if norm.norm_kind == "layernorm" else RmsNorm(dim, norm.norm_eps)
    )


def activation(kind: str) -> nn.Module:
    """The MLP activation of ``gtp_ref.config.ACTIVATIONS`` named ``kind``."""
    if kind == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if kind == "gelu_tanh" else "none")


class Mlp(nn.Module):
    """fc2(norm(act(fc1 x))); ``norm``: a norm of the hidden units or None (timm's Mlp)."""

    def __init__(
        self, dim: int, hidden: int, act: str = "gelu", norm: nn.Module | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(dim, hidden, bias),
            activation(act),
            nn.Linear(hidden, dim, bias),
        )
        self.norm = norm or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """fc2(norm(SiLU(fc1_g x) * fc1_x x)) (timm's SwiGLU, EVA-02)."""

    def __init__(self, dim: int, hidden: int, norm: nn.Module | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1_g, self.fc1_x = nn.Linear(dim, hidden, bias), nn.Linear(dim, hidden, bias)
        self.act, self.norm, self.fc2 = nn.SiLU(), norm or nn.Identity(), nn.Linear(hidden, dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


class GluMlp(nn.Module):
    """fc2(norm(SiLU(a) * b)) with [a, b] = fc1 x split in halves (timm's GluMlp with the gate first)."""

    def __init__(self, dim: int, hidden: int, norm: nn.Module | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(dim, 2 * hidden, bias), nn.SiLU()
        self.norm, self.fc2 = norm or nn.Identity(), nn.Linear(hidden, dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.norm(self.act(gate) * value))


def mlp_layer(mlp: MLPConfig, dim: int, hidden: int, norm: nn.Module | None) -> nn.Module:
    """The config's MLP (``mlp_kind``: a plain MLP with its activation, SwiGLU or GluMlp) from ``dim``
    channels through ``hidden`` units, ``norm`` of the hidden units or None."""
    if mlp.mlp_kind == "swiglu":
        return SwiGLU(dim, hidden, norm, mlp.mlp_bias)
    if mlp.mlp_kind == "glu":
        return GluMlp(dim, hidden, norm, mlp.mlp_bias)
    return Mlp(dim, hidden, mlp.act, norm, mlp.mlp_bias)


class LayerScale(nn.Module):
    """x * gamma, one learned scale per channel (DeiT-III, timm's ``ls1`` / ``ls2``)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def rotate(x: Tensor, table: Tensor, layout: str) -> Tensor:
    """RoPE: x [..., N, d] rotated by table [..., N, 2 d] (the sines, then the cosines, per channel):
    x cos + r(x) sin, where r pairs the channels by ``layout`` -- "interleaved": (x0, x1) -> (-x1, x0);
    "half": (x_i, x_{i + d/2}) -> (-x_{i + d/2}, x_i).  The result in x's dtype."""
    sin, cos = table.chunk(2, dim=-1)
    if layout == "half":
        first, second = x.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    else:
        turned = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    return (x * cos + turned * sin).to(x.dtype)


def axial_rope_table(grid: tuple[int, int], head_dim: int, theta: float = 100.0) -> Tensor:
    """A 2-D axial RoPE table [n, 2 head_dim] for a grid in row-major order, interleaved layout:
    the first half of the channel pairs turns with the patch's row, the second with its column, at
    frequencies theta^(-i / (head_dim / 4)).  The default table of a model built with ``rope`` and
    no table from timm (``from_timm`` copies the timm model's own)."""
    if head_dim % 4:
        raise ValueError(f"rope needs a head width divisible by 4, got {head_dim}")
    h, w = grid
    freqs = theta ** -(torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 4))  # (d / 4,)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # (n,)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)  # (n,)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (n, d / 2)
    angles = angles.repeat_interleave(2, dim=1)  # (n, d): each pair of channels one angle
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(torch.get_default_dtype())


class AttentionPool(nn.Module):
    """Attention pooling (timm's ``AttentionPoolLatent``, ``global_pool="map"``): learned latent
    queries attend over all tokens, then an MLP with a residual: x [B, N, C] -> [B, C].

    ``token_sizes`` [B, N] (proportional attention, as in the blocks) adds log s to each key's
    logit: a token that stands for s patches pools as s of them would; with every size 1 (no
    token reduction) that is timm's pooling exactly.  The latents are pooled by ``pool``:
    "token" (the first) or "avg"."""

    def __init__(self, config: ViTConfig, latent_len: int = 1, pool: str = "token") -> None:
        super().__init__()
        head, dim = config.head, config.embed_dim
        self.num_heads, self.pool = head.pool_heads or config.attention.num_heads, pool
        bias = config.attention.qkv_bias if head.pool_qkv_bias is None else head.pool_qkv_bias
        ratio = config.mlp.mlp_ratio if head.pool_mlp_ratio is None else head.pool_mlp_ratio
        self.latent = nn.Parameter(torch.zeros(1, latent_len, dim))
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = norm_layer(config.norm, dim)
        self.mlp = Mlp(dim, int(dim * ratio), config.mlp.act)

    def forward(self, x: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        H, L = self.num_heads, self.latent.shape[1]
        q = self.q(self.latent).expand(B, -1, -1).reshape(B, L, H, C // H).transpose(1, 2)  # (B, H, L, d)
        k, v = self.kv(x).reshape(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
        log_s = None if token_sizes is None else token_sizes.log()[:, None, None, :]  # (B, 1, 1, N)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=log_s)  # (B, H, L, d)
        out = self.proj(out.transpose(1, 2).reshape(B, L, C))
        out = out + self.mlp(self.norm(out))  # (B, L, C)
        return out[:, 0] if self.pool == "token" else out.mean(dim=1)
