"""The token graph of GTP (spec section 2), as dense matrices.

Nodes are the n image tokens of an h x w patch grid in row-major order ([CLS] is not a node).
    S  spatial:  S_ij = 1 iff i != j and the patches are 8-neighbours
    E  semantic: E_ij = 1 iff j != i and K_ij >= T_i, K = x^ x^T (cosine similarity),
                 T_i = the M-th largest of {K_ij : j != i}
    A  mixed:    A = S or E
    Â = D^-1/2 A D^-1/2, D = diag(row sums of A), with D^-1/2 = 0 on degree-0 rows
"""

import torch
from torch import Tensor

from gtp_ref._checks import check_graph_input


def spatial_graph(
    grid: tuple[int, int], *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """S: [n, n], n = h*w.  S_ij = 1 iff i != j, |row_i - row_j| <= 1 and |col_i - col_j| <= 1."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (n,)
    cols = torch.arange(w, device=device).repeat(h)  # (n,)
    near = ((rows[:, None] - rows[None, :]).abs() <= 1) & ((cols[:, None] - cols[None, :]).abs() <= 1)
    not_self = ~torch.eye(h * w, dtype=torch.bool, device=device)
    return (near & not_self).to(dtype)  # (n, n)


def unit_rows(x: Tensor) -> Tensor:
    """x / ||x|| along the last dimension; a zero row stays zero (cosine 0 with all, not NaN)."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def cosine_similarity(x: Tensor) -> Tensor:
    """K = x^ x^T: [B, n, C] -> [B, n, n], x^ = x / ||x||; a zero-norm token has K = 0 with all."""
    x_hat = unit_rows(x)  # (B, n, C)
    return x_hat @ x_hat.transpose(-2, -1)  # (B, n, n)


def semantic_graph(x_img: Tensor, num_neighbours: int) -> Tensor:
    """E: [B, n, C] -> [B, n, n].  E_ij = 1 iff j != i and K_ij >= T_i (M-th largest off-diagonal).

    Each row has exactly M edges, more only on exact ties at the threshold; M = 0 gives none.
    """
    B, n, _ = x_img.shape
    M = num_neighbours
    not_self = ~torch.eye(n, dtype=torch.bool, device=x_img.device)  # (n, n)
    if M == 0:
        return torch.zeros(B, n, n, dtype=x_img.dtype, device=x_img.device)
    K = cosine_similarity(x_img)  # (B, n, n)
    K_off = K.masked_fill(~not_self, float("-inf"))  # a token is never its own neighbour
    T = semantic_threshold(K_off, M)  # (B, n, 1)
    return ((K_off >= T) & not_self).to(x_img.dtype)  # (B, n, n)


def semantic_threshold(K_off: Tensor, num_neighbours: int) -> Tensor:
    """T_i, the M-th largest of each row: K_off [..., rows, n] with the diagonal at -inf -> [..., rows, 1]."""
    return K_off.topk(num_neighbours, dim=-1).values[..., -1:]


def normalise(A: Tensor) -> Tensor:
    """Â = D^-1/2 A D^-1/2 with D = row sums of A: [B, n, n] -> [B, n, n].

    Done by broadcasting (Â_ij = A_ij d_i d_j, d = deg^-1/2), never with diagonal matrices.
    A row of degree 0 gets d = 0, so its row and column of Â are 0 instead of NaN.
    """
    deg = A.sum(dim=-1)  # (B, n)
    d = inv_sqrt_degree(deg)  # (B, n)
    return A * d[..., :, None] * d[..., None, :]  # (B, n, n)


def inv_sqrt_degree(deg: Tensor) -> Tensor:
    """deg^-1/2 where deg > 0, else 0 (a node without edges contributes nothing, not NaN)."""
    safe = torch.where(deg > 0, deg, torch.ones_like(deg))
    return torch.where(deg > 0, safe.rsqrt(), torch.zeros_like(deg))


def token_graph(
    x_img: Tensor, grid: tuple[int, int], graph: str = "mixed", num_neighbours: int = 4
) -> Tensor:
    """Â of the image tokens: x_img [B, n, C], grid = (h, w) with h*w = n -> [B, n, n].

    graph = "spatial" (S), "semantic" (E with M = num_neighbours) or "mixed" (S or E), then
    normalised (spec section 2).  Built once per image, from the tokens after the position
    embedding and before block 1.
    """
    grid, n = check_graph_input(x_img, grid, graph, num_neighbours)
    B = x_img.shape[0]
    A = torch.zeros(B, n, n, dtype=x_img.dtype, device=x_img.device)
    if graph in ("spatial", "mixed"):
        A = A + spatial_graph(grid, dtype=x_img.dtype, device=x_img.device)
    if graph in ("semantic", "mixed"):
        A = torch.maximum(A, semantic_graph(x_img, num_neighbours))  # element-wise OR
    return normalise(A)
