"""``python -m complexity.plot [--out DIR]``: supplement Figure 3, from the exact sums.

(a) extra MMACs of ToMe and GTP vs feature dimension C (N=197, L=12, M=8, H=C/64);
(b) vs number of tokens N (C=384, H=6, L=12, M=8);
(c) the ratio G_GTP / G_ToMe over (N, C) (L=12, M=8, H=C/64).
The printed (wrong) Eq. 2 is drawn dashed beside ToMe's exact sum, and (dotted) the matrix
products a forward pass executes (``complexity.exact``), where ToMe matches keys averaged over
heads.  Also the figure of the work Eqs. 2-3 leave out (``uncounted``).  Writes figure3 and
uncounted, .png and .pdf, into DIR (default ``figures/``).
"""

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

from complexity import symbols as s
from complexity.extra import eq2_printed, g_gtp_closed, g_tome_closed
from gtp_ref.cli import OneLineParser, output_dir, write_files
from gtp_ref.style import COLORS, save

FIXED = {s.L: 12, s.M: 8}
MARKS = [("DeiT-S", 384), ("DeiT-B", 768), ("C of ViT-L", 1024)]


def log_token_axis(ax: Any) -> None:
    """x axis: N on a log scale with plain tick labels."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.set_xticks([200, 500, 1000, 2000, 4000], labels=["200", "500", "1000", "2000", "4000"])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def curves() -> dict[str, Callable[..., np.ndarray]]:
    """The three cost expressions as numpy functions of (N, C, H), lambdified once."""
    args = (s.N, s.C, s.H)
    f = {
        name: sp.lambdify(args, expr.subs(FIXED), "numpy")
        for name, expr in [
            ("tome", g_tome_closed()),
            ("gtp", g_gtp_closed()),
            ("tome_printed", eq2_printed(s.N, s.L, s.M, s.C)),
        ]
    }
    return {
        k: (
            lambda fn: (
                lambda N, C, H: np.broadcast_to(fn(N, C, H), np.broadcast(N, C, H).shape).astype(float) / 1e6
            )
        )(fn)
        for k, fn in f.items()
    }


def executed(N: np.ndarray, C: np.ndarray, H: np.ndarray, L: int = 12, M: int = 8) -> dict[str, np.ndarray]:
    """MMACs of the matrix products a forward pass executes (``complexity.exact``): ToMe matches
    keys averaged over heads (C/H channels), GTP builds its graph over the N - 1 image tokens."""
    from complexity.exact import g_gtp_exact, g_tome_exact

    N, C, H = np.broadcast_arrays(N, C, H)
    out = {"tome": np.empty(N.shape), "gtp": np.empty(N.shape)}
    for i in np.ndindex(N.shape):
        n, c, h = int(N[i]), int(C[i]), int(H[i])
        out["tome"][i] = g_tome_exact(n, [M] * L, c, h) / 1e6
        out["gtp"][i] = g_gtp_exact(n - 1, [M] * L, c, token_scale=True) / 1e6
    return out


def _cost_curves(ax: Any, x: np.ndarray, paper: dict[str, np.ndarray], run: dict[str, np.ndarray]) -> None:
    gtp, tome = COLORS["gtp"], COLORS["tome"]
    ax.plot(x, paper["tome"], color=tome, label="ToMe, Eq. 2 (its sum, evaluated)")
    ax.plot(x, paper["tome_printed"], "--", color=tome, alpha=0.7, label="ToMe, Eq. 2 as printed (wrong)")
    ax.plot(x, paper["gtp"], color=gtp, label="GTP, Eq. 3")
    ax.plot(x, run["tome"], ":", color=tome, lw=2, label="ToMe as executed (keys averaged over heads)")
    ax.plot(x, run["gtp"], ":", color=gtp, lw=2, label="GTP as executed")


def make_figure(out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = curves()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), constrained_layout=True)

    ax = axes[0]
    C = np.arange(64, 2049, 64, dtype=float)
    H = C / 64
    _cost_curves(ax, C, {k: f[k](197, C, H) for k in f}, executed(197, C, H))
    for name, c in MARKS:
        for key in ("tome", "gtp"):
            ax.plot([c], [float(f[key](197, c, c / 64))], "o", color=COLORS[key], ms=5)
        ax.annotate(
            name,
            (c, float(f["tome"](197, c, c / 64))),
            textcoords="offset points",
            xytext=(-28, 10),
            fontsize=8,
        )
    ax.set(
        xlabel="feature dimension $C$ (channels)",
        ylabel="extra cost (MMACs)",
        title="(a) vs $C$   ($N$ = 197, $L$ = 12, $M$ = 8, $H$ = $C$/64)",
    )

    ax = axes[1]
    N = np.unique(np.geomspace(197, 4097, 120).astype(int)).astype(float)
    _cost_curves(ax, N, {k: f[k](N, 384, 6) for k in f}, executed(N, 384, 6))
    ax.set(
        yscale="log",
        xlabel="number of tokens $N$ (log scale)",
        ylabel="extra cost (MMACs, log scale)",
        title="(b) vs $N$   ($C$ = 384, $H$ = 6, $L$ = 12, $M$ = 8)",
    )
    log_token_axis(ax)

    for ax in axes[:2]:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")

    ax = axes[2]
    NN, CC = np.meshgrid(np.geomspace(197, 4096, 200), np.arange(64, 2049, 16, dtype=float))
    ratio = f["gtp"](NN, CC, CC / 64) / f["tome"](NN, CC, CC / 64)
    im = ax.pcolormesh(NN, CC, ratio, shading="auto", cmap="viridis")
    levels = [0.4, 0.5, 0.6, 0.7]
    cs = ax.contour(NN, CC, ratio, levels=levels, colors="white", linewidths=0.8)
    # labels placed by hand, half-way up each line, clear of each other and of the text below
    spots = [(float(np.interp(level, ratio[60][::-1], NN[60][::-1])), 1050.0) for level in levels]
    ax.clabel(cs, fontsize=8, fmt="%.2f", manual=spots)
    fig.colorbar(im, ax=ax, label=r"$G_\mathrm{GTP}\,/\,G_\mathrm{ToMe}$ (Eqs. 3 / 2)")
    log_token_axis(ax)
    ax.set(
        xlabel="number of tokens $N$ (log scale)",
        ylabel="feature dimension $C$ (channels)",
        title=r"(c) $G_\mathrm{GTP}\,/\,G_\mathrm{ToMe}$ as the paper counts them ($L$ = 12, $M$ = 8)",
    )
    ax.text(
        0.5,
        -0.2,
        r"both grow as $N^2 C$; the ratio tends to $4/L = 1/3$. As executed, ToMe's matching"
        "\nruns on keys averaged over heads ($C/H$ channels): GTP's extra cost is the larger one (a), (b).",
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=8,
    )

    fig.suptitle(
        "Extra cost beyond the backbone, supplement C.4 ($M$ = tokens removed per layer): "
        "the paper's Eqs. 2-3, the printed Eq. 2, and the products a forward pass executes"
    )
    return save(fig, out_dir, "figure3")


def uncounted_series(
    sides: Sequence[int] = range(14, 65, 2),
    L: int = 12,
    P: int = 8,
    C: int = 384,
    H: int = 6,
    patch: int = 16,
) -> dict[str, Any]:
    """Per grid side: N and the counts of the uncounted-work figure (DeiT-S widths)."""
    from complexity.backbone import backbone_macs
    from complexity.exact import g_gtp_exact, g_tome_exact
    from complexity.extra import g_gtp, g_tome
    from complexity.uncounted import gtp_uncounted, tome_uncounted, total
    from gtp_ref.config import ViTConfig

    rows = []
    for side in sides:
        N = side * side + 1
        config = ViTConfig.of(name="DeiT-S", img_size=side * patch, embed_dim=C, num_heads=H, depth=L)
        rows.append(
            {
                "N": N,
                "gtp_paper": float(g_gtp(N, L, P, C, H)),
                "tome_paper": float(g_tome(N, L, P, C)),
                "gtp_macs": g_gtp_exact(N - 1, [P] * L, C, token_scale=True),
                "tome_macs": g_tome_exact(N, [P] * L, C, H),
                "gtp_uncounted": total(gtp_uncounted(N, L, P, C, H)).element_ops,
                "tome_uncounted": total(tome_uncounted(N, L, P, C, H)).element_ops,
                "backbone": backbone_macs(config, [P] * L)["total"],
            }
        )
    return rows


def make_uncounted_figure(out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = uncounted_series()
    N = np.array([r["N"] for r in rows])
    col = {k: np.array([r[k] for r in rows], dtype=float) / 1e6 for k in rows[0] if k != "N"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    ax = axes[0]
    for method, color in (("gtp", COLORS["gtp"]), ("tome", COLORS["tome"])):
        name = "GTP" if method == "gtp" else "ToMe"
        ax.plot(
            N,
            col[f"{method}_paper"],
            ":",
            color=color,
            label=f"{name}: the paper's count (Eq. {3 if method == 'gtp' else 2})",
        )
        ax.plot(N, col[f"{method}_macs"], "-", color=color, label=f"{name}: MACs executed")
        ax.plot(N, col[f"{method}_uncounted"], "--", color=color, label=f"{name}: uncounted element ops")
    ax.set(
        yscale="log",
        xlabel="number of tokens $N$",
        ylabel="millions (MACs or element ops)",
        title="(a) extra work per image (DeiT-S widths, $L$ = 12, $P$ = $r$ = 8)",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax = axes[1]
    for method, color in (("gtp", COLORS["gtp"]), ("tome", COLORS["tome"])):
        name = "GTP" if method == "gtp" else "ToMe"
        share = col[f"{method}_uncounted"] / (col[f"{method}_macs"] + col[f"{method}_uncounted"])
        ax.plot(N, 100 * share, color=color, label=f"{name}: uncounted / (executed MACs + uncounted)")
        extra = (col[f"{method}_macs"] + col[f"{method}_uncounted"]) / col["backbone"]
        ax.plot(N, 100 * extra, "--", color=color, label=f"{name}: all extra work / backbone MACs")
    ax.set(
        xlabel="number of tokens $N$",
        ylabel="share (%)",
        title="(b) share of the extra work that Eqs. 2-3 leave out",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    for ax in axes:
        log_token_axis(ax)
    fig.suptitle(
        "Work beyond the backbone: the paper's count, the matrix products executed, and "
        "the element operations no MAC count sees (1 op counted as 1 MAC)"
    )
    return save(fig, out_dir, "uncounted")


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m complexity.plot", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="figures", help="output folder (default: figures/)")
    # also writes uncounted.png / .pdf: the work Eqs. 2-3 leave out, vs N
    args = p.parse_args(argv)
    out = output_dir(p, "--out", args.out)
    paths = [out / f"{name}.{ext}" for name in ("figure3", "uncounted") for ext in ("png", "pdf")]
    return write_files(p, f"--out {args.out!r}", paths, lambda: make_figure(out) + make_uncounted_figure(out))


if __name__ == "__main__":
    sys.exit(main())
