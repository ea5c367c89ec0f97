"""One look for every figure of the project: a colour per method, the same in every figure."""

from pathlib import Path
from typing import Any

# GTP blue (its backends in shades of it), ToMe red, the unreduced model grey.
COLORS = {
    "gtp": "tab:blue",
    "gtp_dense": "tab:blue",
    "gtp_sparse": "tab:cyan",
    "gtp_fast": "navy",
    "tome": "tab:red",
    "baseline": "tab:gray",
    "baseline_fused": "black",
    "baseline_explicit": "tab:gray",
    "pruning": "tab:olive",
    "pruned_free": "tab:olive",
}


def save(fig: Any, out_dir: str | Path, name: str) -> list[Path]:
    """Write NAME.png (100 dpi) and NAME.pdf without timestamps, so reruns give the same files."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=100, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(fig)
    return paths
