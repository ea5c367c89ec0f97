"""``python -m gtp_ref.apps.digits``: the supplement's accuracy experiments at a scale that runs on a laptop
CPU, on real images that ship with scikit-learn (the ``digits`` extra): its 1,797 handwritten
digits, 8 x 8 pixels, 16 grey levels, read from the package (no download).

Recipe (``train``): each image upsampled to 16 x 16 (bilinear), a ViT with 2 x 2 patches (8 x 8
= 64 image tokens, as many as the digit has pixels; C = 48, 4 blocks, 4 heads, MLP ratio 2),
with a [CLS] token (token pooling) or without (average pooling), trained from scratch on a fixed
stratified 75 % split (1,347 images) for ``--epochs`` epochs: AdamW (lr 1e-3, weight decay
0.05), batch 64, cosine schedule after a 3-epoch warm-up, label smoothing 0.1, random shifts of
up to one pixel of the 16 x 16 image.  (One token per pixel of the 8 x 8 image trained to
48-53 % in 40 epochs: a token of one grey value is too little.)  One model per training seed
and head; checkpoints are kept in ``--models-dir`` and reused.

Then, without retraining, on the other 450 images (every GTP run: mixed graph with M = 4,
``mixed_attn_max``, token sizes on, unless varied).  GTP's attention sparsity theta changes the
attention of every block, also where nothing is removed, so each experiment runs at the paper's
theta = 0.6 for DeiT-S and at theta = 1 (no sparsity), and ``unreduced`` holds the model at both:

* ``alpha``: accuracy against alpha from 0 to 1 at P = 8 and 12 tokens removed per block
  (Figure 1's experiment; alpha = 0 is plain pruning);
* ``neighbours``: accuracy against the semantic neighbours M, semantic-only vs mixed graph, at
  P = 4, 8 and 12, alpha = 0.5, theta = 0.6 (Figure 2's, at its DeiT-S settings);
* ``methods``: GTP (alpha = 0.1) vs pruning (alpha = 0) at both theta, and ToMe (r = P), at
  equal tokens removed per block, P = 4, 8, 12, with and without [CLS] (Table 3's ordering).

Every number is the mean over the training seeds, with the spread (min-max) in the figures and
each seed's value in the JSON.  docs/reproduction.md reports what reproduces.
"""

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gtp_ref.cli import OneLineParser, output_dir, output_path, write_files
from gtp_ref.presets import paper_settings

MODEL = dict(
    img_size=16, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, depth=4, num_heads=4, mlp_ratio=2.0
)
TRAIN = dict(lr=1e-3, weight_decay=0.05, batch_size=64, warmup=3, label_smoothing=0.1)
PAPER = paper_settings("deit_small")  # the paper's settings, as for DeiT-S
GTP = dict(selection=PAPER.selection, token_scale=PAPER.token_scale, propagation=PAPER.propagation)
SPARSITIES = (PAPER.sparsity, 1.0)  # the paper's theta for DeiT-S, and none
ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
ALPHA_P = (8, 12)
NEIGHBOURS = (1, 2, 4, 8, 16)
NEIGHBOUR_P = (4, 8, 12)
NEIGHBOUR_SETTING = dict(alpha=0.5, sparsity=0.6)
METHOD_P = (4, 8, 12)
METHOD_ALPHA = PAPER.alpha
HEADS = {
    "cls": dict(class_token=True, global_pool="token"),
    "avg": dict(class_token=False, global_pool="avg"),
}


def load(split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images [n, 1, 16, 16] in [-1, 1], train labels, test images, test labels): the fixed
    stratified 75 / 25 split of scikit-learn's digits, each image upsampled 2x (bilinear)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ValueError(
            f"the digits experiment needs scikit-learn ({e}); pip install 'gtp-ref[digits]'"
        ) from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8 - 1  # 0..16 -> [-1, 1], (n, 1, 8, 8)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (n, 1, 16, 16)
    y = torch.tensor(data.target)
    train, test = train_test_split(
        range(len(y)), test_size=0.25, stratify=data.target, random_state=split_seed
    )
    return x[train], y[train], x[test], y[test]


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero padding), independently."""
    B, _, H, W = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # the background
    dy, dx = torch.randint(0, 3, (2, B), generator=g)
    rows = (dy[:, None] + torch.arange(H))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(B)[:, None, None], 0, rows, cols][:, None]


def build(head: str, **gtp: Any) -> Any:
    from gtp_ref.config import ViTConfig
    from gtp_ref.model import GTPViT

    return GTPViT(ViTConfig.of(**MODEL, **HEADS[head]), **gtp)


def train(seed: int, head: str, epochs: int, data: tuple, progress: Callable[[str], None] = print) -> dict:
    """A model trained from scratch by the recipe -> its state_dict."""
    x, y = data[0], data[1]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build(head).train()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    steps_per_epoch = math.ceil(len(y) / TRAIN["batch_size"])
    total, warmup = epochs * steps_per_epoch, TRAIN["warmup"] * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), TRAIN["batch_size"]):
            idx = order[i : i + TRAIN["batch_size"]]
            loss = F.cross_entropy(model(shift(x[idx], g)), y[idx], label_smoothing=TRAIN["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            progress(
                f"seed {seed}, {head}: epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}, "
                f"{time.perf_counter() - t0:.0f} s"
            )
    return model.state_dict()


def accuracy(model: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in % of an eval-mode model on (x, y)."""
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(-1) == y).float().mean())


def reduced(
    state: dict,
    head: str,
    method: str,
    num_prop: int = 0,
    alpha: float = METHOD_ALPHA,
    num_neighbours: int = 4,
    graph: str = "mixed",
    sparsity: float = 1.0,
) -> Any:
    """The trained model (state) reduced by ``method`` ("gtp", "prune" = GTP with alpha = 0, "tome",
    "none": GTP's blocks removing nothing, at ``sparsity``) at num_prop tokens per block, eval mode."""
    from gtp_ref.config import ViTConfig
    from gtp_ref.tome import ToMeViT

    if method == "tome":
        model = ToMeViT(ViTConfig.of(**MODEL, **HEADS[head]), r=num_prop)
    elif method == "none":
        model = build(head, sparsity=sparsity)
    else:
        model = build(
            head,
            **GTP,
            num_prop=num_prop,
            alpha=0.0 if method == "prune" else alpha,
            num_neighbours=num_neighbours,
            graph=graph,
            sparsity=sparsity,
        )
    model.load_state_dict(state)
    return model.eval()


def sweeps(
    states: dict[tuple[int, str], dict],
    data: tuple,
    alphas: Sequence[float] = ALPHAS,
    alpha_P: Sequence[int] = ALPHA_P,
    neighbours: Sequence[int] = NEIGHBOURS,
    neighbour_P: Sequence[int] = NEIGHBOUR_P,
    method_P: Sequence[int] = METHOD_P,
    progress: Callable[[str], None] = print,
) -> dict[str, list]:
    """Every experiment's rows: {"unreduced": [...], "alpha": [...], "neighbours": [...], "methods":
    [...]}, each row with the accuracy of every seed ("acc": [...]) and their mean."""
    x, y = data[2], data[3]
    t0 = time.perf_counter()
    seeds = sorted({s for s, _ in states})
    heads = sorted({h for _, h in states})

    def row(head: str, **setting: Any) -> dict[str, Any]:
        acc = [accuracy(reduced(states[(s, head)], head, **setting), x, y) for s in seeds]
        return {"head": head, **setting, "acc": acc, "mean": sum(acc) / len(acc)}

    cls = ["cls"] if "cls" in heads else []
    out: dict[str, list] = {
        "unreduced": [row(h, method="none", sparsity=t) for h in heads for t in SPARSITIES]
    }
    out["alpha"] = [
        row(h, method="gtp", num_prop=P, alpha=a, sparsity=t)
        for h in cls
        for t in SPARSITIES
        for P in alpha_P
        for a in alphas
    ]
    out["neighbours"] = [
        row(h, method="gtp", num_prop=P, num_neighbours=M, graph=g, **NEIGHBOUR_SETTING)
        for h in cls
        for P in neighbour_P
        for g in ("semantic", "mixed")
        for M in neighbours
    ]
    out["methods"] = [row(h, method="tome", num_prop=P) for h in heads for P in method_P]
    out["methods"] += [
        row(h, method=m, num_prop=P, sparsity=t)
        for h in heads
        for P in method_P
        for m in ("gtp", "prune")
        for t in SPARSITIES
    ]
    progress(
        f"swept {sum(map(len, out.values()))} settings x {len(seeds)} seeds in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return out


# ---- figures -----------------------------------------------------------------------------------------
THETA_STYLE = {1.0: "-", 0.6: "--"}  # line style of each attention sparsity


def _band(ax: Any, xs: list, rows: list[dict], color: str, ls: str = "-", label: str | None = None) -> None:
    ax.plot(xs, [r["mean"] for r in rows], marker="o", ms=3, color=color, ls=ls, label=label)
    ax.fill_between(xs, [min(r["acc"]) for r in rows], [max(r["acc"]) for r in rows], alpha=0.15, color=color)


def _select(rows: list[dict], key: str, **match: Any) -> list[dict]:
    return sorted((r for r in rows if all(r.get(k) == v for k, v in match.items())), key=lambda r: r[key])


def _unreduced_lines(ax: Any, results: dict[str, Any], head: str) -> None:
    for r in _select(results["unreduced"], "sparsity", head=head):
        ax.axhline(
            r["mean"],
            color="tab:gray",
            ls=":" if r["sparsity"] < 1 else "-",
            lw=1,
            label=f"unreduced, θ = {r['sparsity']:g}",
        )


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gtp_ref.style import COLORS, save

    written = []
    note = f"mean of {len(results['seeds'])} training seeds, band: min-max; θ: attention sparsity"
    if results["alpha"]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, P in enumerate(sorted({r["num_prop"] for r in results["alpha"]})):
            for theta in sorted({r["sparsity"] for r in results["alpha"]}, reverse=True):
                rows = _select(results["alpha"], "alpha", num_prop=P, sparsity=theta)
                _band(
                    ax,
                    [r["alpha"] for r in rows],
                    rows,
                    f"C{i}",
                    THETA_STYLE.get(theta, "-."),
                    f"GTP, P = {P}, θ = {theta:g}",
                )
        _unreduced_lines(ax, results, "cls")
        ax.set(
            xlabel="propagation weight α (α = 0: pruning)",
            ylabel="test accuracy (%)",
            title=f"Digits ViT ([CLS]): accuracy vs α\n({note})",
        )
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written += save(fig, out_dir, "digits_alpha")
    if results["neighbours"]:
        Ps = sorted({r["num_prop"] for r in results["neighbours"]})
        fig, axes = plt.subplots(1, len(Ps), figsize=(4 * len(Ps), 3.8), squeeze=False)
        for ax, P in zip(axes[0], Ps):
            for graph, color in (("semantic", "tab:purple"), ("mixed", COLORS["gtp"])):
                rows = _select(results["neighbours"], "num_neighbours", num_prop=P, graph=graph)
                _band(ax, [r["num_neighbours"] for r in rows], rows, color, label=f"{graph} graph")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="semantic neighbours M", ylabel="test accuracy (%)", title=f"P = {P} per block")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        setting = ", ".join(f"{'α' if k == 'alpha' else 'θ'} = {v:g}" for k, v in NEIGHBOUR_SETTING.items())
        fig.suptitle(f"Digits ViT ([CLS]): semantic-only vs mixed graph, {setting}\n({note})")
        fig.tight_layout()
        written += save(fig, out_dir, "digits_neighbours")
    heads = sorted({r["head"] for r in results["methods"]})
    fig, axes = plt.subplots(1, len(heads), figsize=(5.2 * len(heads), 4.4), squeeze=False)
    for ax, head in zip(axes[0], heads):
        rows = _select(results["methods"], "num_prop", head=head, method="tome")
        _band(ax, [r["num_prop"] for r in rows], rows, COLORS["tome"], label="ToMe (r = P)")
        for method, label in (("gtp", f"GTP (α = {METHOD_ALPHA:g})"), ("prune", "pruning (α = 0)")):
            for theta in sorted(
                {r.get("sparsity") for r in results["methods"] if r["method"] == method}, reverse=True
            ):
                rows = _select(results["methods"], "num_prop", head=head, method=method, sparsity=theta)
                _band(
                    ax,
                    [r["num_prop"] for r in rows],
                    rows,
                    COLORS["pruning" if method == "prune" else method],
                    THETA_STYLE.get(theta, "-."),
                    f"{label}, θ = {theta:g}",
                )
        _unreduced_lines(ax, results, head)
        ax.set(
            xlabel="tokens removed per block P (64 image tokens, 4 blocks)",
            ylabel="test accuracy (%)",
            title="with [CLS] (token pooling)" if head == "cls" else "without [CLS] (average pooling)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Digits ViT: GTP vs ToMe vs pruning at equal tokens removed\n({note})")
    fig.tight_layout()
    written += save(fig, out_dir, "digits_methods")
    return written


def table(results: dict[str, Any]) -> str:
    """The methods experiment and the unreduced models as a text table (mean top-1 %)."""
    lines = [
        f"digits: {results['test_images']} test images, seeds {results['seeds']}, {results['epochs']} epochs",
        "",
    ]
    for r in results["unreduced"]:
        lines.append(
            f"unreduced ({r['head']}, theta {r['sparsity']:g}): {r['mean']:.2f} %  "
            f"(seeds: {', '.join(f'{a:.2f}' for a in r['acc'])})"
        )
    columns = [("tome", None)] + [(m, t) for m in ("gtp", "prune") for t in SPARSITIES]
    names = ["ToMe"] + [f"{'GTP' if m == 'gtp' else 'prune'} {t:g}" for m, t in columns[1:]]
    header = f"{'head':>4} {'P':>3} " + " ".join(f"{n:>9}" for n in names)
    lines += ["", header + "   (mean top-1 %; theta after the name)"]
    for head in sorted({r["head"] for r in results["methods"]}):
        for P in sorted({r["num_prop"] for r in results["methods"]}):
            got = {
                (r["method"], r.get("sparsity")): r["mean"]
                for r in results["methods"]
                if r["head"] == head and r["num_prop"] == P
            }
            lines.append(f"{head:>4} {P:>3} " + " ".join(f"{got[c]:>9.2f}" for c in columns))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m gtp_ref.apps.digits", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    p.add_argument(
        "--heads",
        nargs="+",
        choices=list(HEADS),
        default=list(HEADS),
        help="cls: [CLS] token pooling; avg: no [CLS], average pooling (default both)",
    )
    p.add_argument("--models-dir", default=".digits_models", help="checkpoints, reused when present")
    p.add_argument("--json-out", default=None, metavar="FILE.json")
    p.add_argument("--figures", default=None, metavar="DIR", help="write digits_*.png / .pdf there")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs {args.epochs}: must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {args.seeds}: each seed once")
    json_out = output_path(p, "--json-out", args.json_out, suffixes=[".json"])
    fig_dir = None if args.figures is None else output_dir(p, "--figures", args.figures)
    models_dir = output_dir(p, "--models-dir", args.models_dir)
    try:
        data = load()
    except ValueError as e:
        p.error(str(e))
    models_dir.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    states = {}
    for seed in args.seeds:
        for head in args.heads:
            path = models_dir / f"digits_{head}_seed{seed}_e{args.epochs}.pth"
            if path.exists():
                states[(seed, head)] = torch.load(path, weights_only=True)
                say(f"reusing {path}")
            else:
                states[(seed, head)] = train(seed, head, args.epochs, data, say)
                torch.save(states[(seed, head)], path)
    say("sweeping ...")
    results = {
        "command": "python -m gtp_ref.apps.digits " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "scikit-learn": sklearn_version(),
        "threads": torch.get_num_threads(),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "model": MODEL,
        "train": TRAIN,
        "gtp": GTP,
        "train_images": len(data[1]),
        "test_images": len(data[3]),
        **sweeps(states, data, progress=say),
    }
    print(table(results), end="")
    paths = ([json_out] if json_out else []) + (
        [
            fig_dir / f"digits_{name}.{ext}"
            for name in (["alpha", "neighbours"] if "cls" in args.heads else []) + ["methods"]
            for ext in ("png", "pdf")
        ]
        if fig_dir
        else []
    )

    def write() -> list[Path]:
        if json_out:
            json_out.write_text(json.dumps(results, indent=1) + "\n")
        return ([json_out] if json_out else []) + (figures(results, fig_dir) if fig_dir else [])

    return write_files(p, "--json-out / --figures", paths, write, kept="the table above") if paths else 0


if __name__ == "__main__":
    sys.exit(main())
