"""``python -m gtp_ref.apps.vis IMAGE MODEL --out FILE.png``: what GTP did to one image.

MODEL: ``--timm NAME [--checkpoint FILE]``, ``--hf NAME`` (a ``save_pretrained`` folder, or a
model type with random weights) or ``--preset NAME`` (random weights).

Left: the image as the model sees it (its own resolution, crop and mean / std, undone for display)
with the patch grid; every propagated patch is shaded by the block that propagated it (a colour
per block), and the graph edges along which its features went to kept patches are drawn (for
``--block B``, or for every block with ``--block all``; line width by edge weight).  Right: the
final token size of every patch (how much of the image each remaining token carries; blank:
propagated).  ``--features`` adds a row below: the unreduced model's final features and the reduced
model's restored to the full grid (``forward_dense``), coloured by the unreduced features' first
three principal components.  The GTP settings default to the paper's (P = 8, mixed graph, mixed_attn_max,
theta = 0.6, alpha = 0.1, token sizes on); ``--num-prop`` etc. change them.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gtp_ref._checks import GRAPHS, SELECTIONS
from gtp_ref.cli import OneLineParser, output_path, write_files
from gtp_ref.presets import FACTORIES, paper_settings


def shading(trace: Any, grid: tuple[int, int]) -> np.ndarray:
    """[h, w] per image patch: the block that propagated it, -1 if kept to the end (image 0)."""
    return trace.provenance.propagated_at[0].reshape(grid).cpu().numpy()


def overlay(blocks: np.ndarray, depth: int, patch: int, cmap: Any) -> np.ndarray:
    """An RGBA image [h*patch, w*patch, 4]: each propagated patch in its block's colour (alpha 0.55),
    kept patches transparent."""
    h, w = blocks.shape
    rgba = np.zeros((h, w, 4))
    propagated = blocks >= 0
    rgba[propagated] = cmap(blocks[propagated] / max(depth - 1, 1))
    rgba[..., 3] = np.where(propagated, 0.55, 0.0)
    return np.kron(rgba, np.ones((patch, patch, 1)))


def draw(
    image: np.ndarray,
    trace: Any,
    grid: tuple[int, int],
    patch: int,
    depth: int,
    block: str,
    title: str,
    path: str,
    dense: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The two panels, written to ``path`` (1400 x 650 px), and with ``dense`` (the unreduced and
    the restored features as RGB, [h, w, 3] each) two more below them (1400 x 1300 px); returns
    the overlay drawn on the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    cmap = plt.get_cmap("viridis")
    blocks = shading(trace, grid)
    shade = overlay(blocks, depth, patch, cmap)
    rows = 1 if dense is None else 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 6.5 * rows), constrained_layout=True, squeeze=False)
    ax, ax2 = axes[0]
    ax.imshow(image)
    ax.imshow(shade)
    h, w = grid
    for r in range(1, h):
        ax.axhline(r * patch - 0.5, color="white", lw=0.3, alpha=0.5)
    for c in range(1, w):
        ax.axvline(c * patch - 0.5, color="white", lw=0.3, alpha=0.5)
    centre = lambda i: ((i % w) * patch + patch / 2 - 0.5, (i // w) * patch + patch / 2 - 0.5)  # noqa: E731
    segments, widths, colours = [], [], []
    for edges in trace.provenance.edges:
        l = int(edges["block"])
        if block != "all" and l != int(block):
            continue
        mine = edges["image"] == 0
        for src, dst, weight in zip(
            edges["src"][mine].tolist(), edges["dst"][mine].tolist(), edges["weight"][mine].tolist()
        ):
            segments.append([centre(src), centre(dst)])
            widths.append(0.4 + 2.5 * weight)
            colours.append(cmap(l / max(depth - 1, 1)))
    ax.add_collection(LineCollection(segments, linewidths=widths, colors=colours, alpha=0.9))
    norm = matplotlib.colors.Normalize(0, depth - 1)
    fig.colorbar(
        matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="block that propagated the patch"
    )
    which = "every block" if block == "all" else f"block {block}"
    ax.set(
        title=f"propagated patches, coloured by block;\nlines: graph edges to the kept patches\nthat "
        "received "
        f"them ({which})",
        xticks=[],
        yticks=[],
    )
    sizes = trace.provenance.final_sizes[0].reshape(grid).cpu().numpy().astype(float)
    im = ax2.imshow(np.ma.masked_equal(sizes, 0.0), cmap="magma")
    fig.colorbar(im, ax=ax2, label="token size at the end (1 = the patch alone)")
    ax2.set(title="final token sizes per patch (blank: propagated)", xticks=[], yticks=[])
    if dense is not None:
        for a, rgb, what in zip(
            axes[1], dense, ("the unreduced model's", "GTP's, restored to the full grid")
        ):
            a.imshow(rgb, interpolation="nearest")
            a.set(
                title=f"final features per patch: {what}\n(PCA of the unreduced features as RGB)",
                xticks=[],
                yticks=[],
            )
    fig.suptitle(title)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return shade


def build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, str, Any]:
    """The GTP model the arguments ask for, how to name it, and the preprocessing of the model it
    comes from (timm's ``pretrained_cfg``, an HF image processor's config, the preset's)."""
    import gtp_ref
    from gtp_ref.apps.loading import gtp_from, hf_model, timm_model
    from gtp_ref.apps.preprocess import Preprocessing

    changes = dict(
        num_prop=args.num_prop,
        graph=args.graph,
        num_neighbours=args.num_neighbours,
        selection=args.selection,
        alpha=args.alpha,
    )
    if args.sparsity is not None:
        changes["sparsity"] = args.sparsity
    settings = paper_settings(args.preset, **changes).kwargs()
    if args.checkpoint is not None and args.timm is None:
        parser.error(
            "--checkpoint goes with --timm NAME (an --hf folder holds its weights; load a state_dict "
            "into a preset yourself)"
        )
    try:
        if args.preset is not None:
            model = getattr(gtp_ref, args.preset)(**settings).eval()
            return model, f"{args.preset} (random weights)", Preprocessing.of(model)
        if args.hf is not None:
            net, name = hf_model(args.hf), f"{args.hf} (Hugging Face)"
        else:
            net, name = (
                timm_model(args.timm, args.checkpoint),
                f"{args.timm} ({args.checkpoint or 'random weights'})",
            )
        return gtp_from(net, **settings), name, Preprocessing.of(net)
    except (TypeError, ValueError) as e:
        parser.error(" ".join(str(e).split())[:300])


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m gtp_ref.apps.vis", description=__doc__.splitlines()[0])
    p.add_argument("image", help="an image file Pillow can read")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--timm", metavar="NAME", help="a timm model name (random weights unless --checkpoint)")
    src.add_argument(
        "--hf",
        metavar="NAME",
        help="a Hugging Face model: a save_pretrained folder, or a model type (random weights)",
    )
    src.add_argument("--preset", choices=list(FACTORIES), help="a gtp_ref preset (random weights)")
    p.add_argument("--checkpoint", metavar="FILE", help="with --timm: a state_dict to load")
    paper = paper_settings()  # the defaults: the paper's (theta per preset)
    p.add_argument(
        "--num-prop",
        type=int,
        default=paper.num_prop,
        metavar="P",
        help=f"tokens propagated per block (default {paper.num_prop})",
    )
    p.add_argument("--graph", default=paper.graph, choices=GRAPHS)
    p.add_argument("--num-neighbours", type=int, default=paper.num_neighbours, metavar="M")
    p.add_argument("--selection", default=paper.selection, choices=SELECTIONS)
    p.add_argument(
        "--sparsity", type=float, default=None, help=f"theta (default {paper.sparsity}, 0.5 for deit_base)"
    )
    p.add_argument("--alpha", type=float, default=paper.alpha)
    p.add_argument("--block", default="all", help="whose edges to draw: a block index or 'all' (default)")
    p.add_argument(
        "--features", action="store_true", help="add the unreduced and the restored final features"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", required=True, metavar="FILE.png")
    args = p.parse_args(argv)
    out = output_path(p, "--out", args.out, suffixes=[".png"])
    from gtp_ref.apps.preprocess import load_image

    try:
        image = load_image(args.image)
    except ValueError as e:
        p.error(str(e))
    torch.manual_seed(args.seed)
    model, name, pre = build(args, p)
    if args.block != "all" and not (args.block.isdigit() and int(args.block) < len(model.blocks)):
        p.error(f"--block {args.block!r}: a block index in [0, {len(model.blocks) - 1}] or 'all'")
    x = pre(image)[None].to(next(model.parameters()).dtype)
    with torch.no_grad():
        trace = model.forward_trace(x, record=True)
        dense = None
        if args.features:
            from gtp_ref.apps.features import pca_colours

            restored, num_prop = model.forward_dense(x), model.num_prop
            model.num_prop = 0  # the same weights, unreduced
            try:
                unreduced = model.forward_dense(x)
            finally:
                model.num_prop = num_prop
            colours = pca_colours({"unreduced": unreduced[0], "restored": restored[0]})
            dense = colours["unreduced"], colours["restored"]
    shown = np.asarray(pre.crop(image)) / 255.0
    patch = model.config.patches.img_size[0] // model.grid[0]
    title = (
        f"GTP on {name}: P = {args.num_prop} per block, {args.graph} graph (M = {args.num_neighbours}), "
        f"{args.selection}, θ = {model.sparsity}, α = {args.alpha}; {trace.final_tokens} of "
        f"{model.num_image_tokens + model.num_prefix_tokens} tokens left"
    )

    def write() -> list:
        draw(shown, trace, model.grid, patch, len(model.blocks), args.block, title, str(out), dense)
        return [out]

    return write_files(p, "--out", [out], write)


if __name__ == "__main__":
    sys.exit(main())
