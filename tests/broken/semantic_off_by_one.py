"""The authors' no-[CLS] defect: the semantic graph keeps M + 1 neighbours."""

from gtp_ref.backends import sparse
from gtp_ref.backends.sparse import *  # noqa: F401,F403


def token_graph(x_img, grid, graph="mixed", num_neighbours=4):
    n = x_img.shape[1]
    return sparse.token_graph(
        x_img, grid, graph, min(num_neighbours + 1, n - 1) if graph != "spatial" else num_neighbours
    )
