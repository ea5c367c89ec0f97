"""Right values, wrong shapes: every output carries an extra trailing dimension of size 1."""

from gtp_ref.backends import dense


def token_graph(x_img, grid, graph="mixed", num_neighbours=4):
    return dense.token_graph(x_img, grid, graph, num_neighbours)


def to_dense(G):
    return G[..., None]


def sparsify_attention(attn, sparsity):
    return dense.sparsify_attention(attn, sparsity)[..., None]


def token_scores(attn, selection, prefix_tokens=True, generator=None):
    return dense.token_scores(attn, selection, prefix_tokens, generator)[..., None]


def select_tokens(scores, num_prop):
    kept, prop = dense.select_tokens(scores, num_prop)
    return kept[..., None], prop[..., None]


def propagate(x, G, kept, prop, alpha, token_sizes=None, prefix_tokens=True, mode="graph"):
    x2, G2, s2 = dense.propagate(x, G, kept, prop, alpha, token_sizes, prefix_tokens, mode)
    return x2[..., None], G2, None if s2 is None else s2[..., None]
