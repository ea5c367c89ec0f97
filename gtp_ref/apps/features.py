"""``python -m gtp_ref.apps.features``: how close a reduced model's dense features come to the
unreduced model's (docs/features.md).

For each model, method and P, every patch's restored final feature (``forward_dense``: GTP's
restore map, ToMe's merge map) is compared with the unreduced model's feature of that patch by
cosine similarity; the table gives the mean and the 10th percentile over all patches of all
images, and the restore's cost: ``forward_dense`` over ``forward_features`` timed in one
interleaved run.  Methods: ``gtp`` (the paper's settings, alpha = 0.1), ``prune`` (the same with
alpha = 0, restored by the same rule) and ``tome`` (r = P).

Models (``--models``):

* ``digits``: the model ``python -m gtp_ref.apps.digits`` trains (seed 0, [CLS] head; reused from
  ``--models-dir`` when present, else trained here), on its 450 test digits, P = 8 and 12;
* ``deit_small`` / ``dinov2_small``: DeiT-S (16 px patches, 196 tokens) and DINOv2-S geometry
  (14 px patches, 256 tokens), width 384, 12 blocks, 6 heads, with random weights (no pretrained
  weights ship with any dependency), on crops of scikit-learn's two sample photographs
  (``load_sample_images``), P = 8 and 16.

``--figure FILE.png`` draws, for the first photograph, the unreduced model's features and each
method's restored ones at each P, coloured by the unreduced features' first three
principal components.
"""

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gtp_ref.cli import OneLineParser, output_dir, output_path, write_files
from gtp_ref.presets import paper_settings

METHODS = ("gtp", "prune", "tome")
GEOMETRIES = {
    "deit_small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=0),
    "dinov2_small": dict(img_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6, num_classes=0),
}
MODELS = ("digits", *GEOMETRIES)
PS = {"digits": (8, 12), "deit_small": (8, 16), "dinov2_small": (8, 16)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as DeiT's and DINOv2's


def photographs(size: int, crops: int) -> torch.Tensor:
    """scikit-learn's sample photographs, each resized to ``size * 8 / 7`` on its shorter side and
    cut into ``crops`` square crops of ``size`` spread along its longer side, normalised: [2 crops,
    3, size, size]."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise ValueError(
            f"the photographs come with scikit-learn ({e}); pip install 'gtp-ref[digits]'"
        ) from None
    out = []
    for image in load_sample_images().images:  # (427, 640, 3) uint8 each
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
        short = round(size * 8 / 7)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(short, round(w * short / h)), mode="bilinear", antialias=True)
        top, span = (short - size) // 2, x.shape[-1] - size
        for i in range(crops):
            left = span * i // max(crops - 1, 1) if crops > 1 else span // 2
            out.append(x[0, :, top : top + size, left : left + size])
    x = torch.stack(out)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def reduced(base: Any, method: str, P: int, settings: dict[str, Any]) -> Any:
    """The model with base's weights reduced by method at P tokens per block, eval mode."""
    from gtp_ref.model import GTPViT
    from gtp_ref.tome import ToMeViT

    if method == "tome":
        model = ToMeViT(base.config, r=P)
    else:
        model = GTPViT(
            base.config,
            **{**settings, "num_prop": P, "alpha": 0.0 if method == "prune" else settings["alpha"]},
        )
    model.load_state_dict(base.state_dict())
    return model.eval()


def cosine(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Per-patch cosine similarity of two [B, C, h, w] grids -> [B h w]."""
    return F.cosine_similarity(got.flatten(2), want.flatten(2), dim=1).flatten()


def timed(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved round by round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def measure(
    name: str, base: Any, x: torch.Tensor, Ps: Sequence[int], settings: dict[str, Any], rounds: int
) -> tuple[list[dict], dict]:
    """The rows of one model, and the grids for the figure: "unreduced" and (method, P)."""
    rows, grids = [], {}
    with torch.no_grad():
        want = base.forward_dense(x)  # (B, C, h, w): the unreduced model's features
        grids["unreduced"] = want
        for P in Ps:
            for method in METHODS:
                model = reduced(base, method, P, settings)
                got = model.forward_dense(x)
                cos = cosine(got, want)
                t = timed(
                    {"features": lambda: model.forward_features(x), "dense": lambda: model.forward_dense(x)},
                    rounds,
                )
                rows.append(
                    dict(
                        model=name,
                        P=P,
                        method=method,
                        tokens_left=model.forward_features(x[:1]).shape[1],
                        cos_mean=float(cos.mean()),
                        cos_p10=float(cos.quantile(0.1)),
                        features_ms=1e3 * t["features"],
                        dense_ms=1e3 * t["dense"],
                    )
                )
                grids[(method, P)] = got
    return rows, grids


def table(rows: list[dict]) -> str:
    lines = [
        "| model | P | method | tokens left | cos mean | cos p10 | forward_features ms | forward_dense ms "
        "| restore cost |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['P']} | {r['method']} | {r['tokens_left']} | {r['cos_mean']:.3f} | "
            f"{r['cos_p10']:.3f} | {r['features_ms']:.1f} | {r['dense_ms']:.1f} | "
            f"{100 * (r['dense_ms'] / r['features_ms'] - 1):+.0f} % |"
        )
    return "\n".join(lines) + "\n"


def pca_colours(grids: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Each [C, h, w] grid as RGB [h, w, 3]: projected on the unreduced grid's first three
    principal components, scaled by the unreduced projection's range."""
    ref = grids["unreduced"].flatten(1).T.double()  # (h w, C)
    mean = ref.mean(0)
    _, _, V = torch.linalg.svd(ref - mean, full_matrices=False)
    basis = V[:3].T  # (C, 3)
    proj_ref = (ref - mean) @ basis
    lo, hi = proj_ref.amin(0), proj_ref.amax(0)
    out = {}
    for k, g in grids.items():
        p = (g.flatten(1).T.double() - mean) @ basis
        rgb = ((p - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        out[k] = rgb.reshape(*g.shape[1:], 3).numpy()
    return out


def figure(photo: torch.Tensor, grids: dict[Any, torch.Tensor], name: str, path: Path) -> Path:
    """The photograph, the unreduced features and each method's restored ones, a row per P."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = pca_colours({k: v[0] for k, v in grids.items()})
    shown = photo * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    Ps = sorted({k[1] for k in grids if k != "unreduced"})
    fig, axes = plt.subplots(
        len(Ps), 2 + len(METHODS), figsize=(3 * (2 + len(METHODS)), 3.2 * len(Ps)), squeeze=False
    )
    for row, P in zip(axes, Ps):
        panels = [
            ("photograph", shown.permute(1, 2, 0).clamp(0, 1).numpy()),
            ("unreduced", colours["unreduced"]),
        ]
        panels += [(f"{method}, P = {P}", colours[(method, P)]) for method in METHODS]
        for ax, (title, img) in zip(row, panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=10)
            ax.axis("off")
    fig.suptitle(
        f"{name}: final features restored to the patch grid (PCA of the unreduced features as RGB)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m gtp_ref.apps.features", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all three")
    p.add_argument("--crops", type=int, default=4, help="crops per photograph (default 4)")
    p.add_argument(
        "--img-size", type=int, default=224, help="the photographs' models' image size (default 224)"
    )
    p.add_argument("--epochs", type=int, default=40, help="the digits model's training epochs (default 40)")
    p.add_argument(
        "--models-dir", default=".digits_models", help="the digits checkpoints, reused when present"
    )
    p.add_argument(
        "--num-prop",
        type=int,
        nargs="+",
        default=None,
        metavar="P",
        help="P per block (default: 8 12 on digits, 8 16 on the photographs)",
    )
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    p.add_argument("--json-out", default=None, metavar="FILE.json")
    p.add_argument(
        "--figure", default=None, metavar="FILE.png", help="the PCA figure of the first photograph"
    )
    args = p.parse_args(argv)
    for option, value in (("--crops", args.crops), ("--epochs", args.epochs), ("--rounds", args.rounds)):
        if value < 1:
            p.error(f"{option} {value}: must be >= 1")
    if args.num_prop and min(args.num_prop) < 1:
        p.error(f"--num-prop {args.num_prop}: each must be >= 1")
    for name in set(args.models) & set(GEOMETRIES):
        patch = GEOMETRIES[name]["patch_size"]
        if args.img_size < 2 * patch or args.img_size % patch:
            p.error(
                f"--img-size {args.img_size}: {name} needs a multiple of its patch, {patch}, "
                f"of at least {2 * patch}"
            )
    json_out = output_path(p, "--json-out", args.json_out, suffixes=[".json"])
    fig_out = output_path(p, "--figure", args.figure, suffixes=[".png", ".pdf"])
    models_dir = output_dir(p, "--models-dir", args.models_dir) if "digits" in args.models else None
    settings = paper_settings("deit_small", sparsity=1.0).kwargs()  # no sparsity: only the reduction differs

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[dict] = []
    shown: tuple | None = None
    try:
        x_photos = photographs(args.img_size, args.crops) if set(args.models) - {"digits"} else None
        for name in args.models:
            say(f"{name} ...")
            if name == "digits":
                from gtp_ref.apps import digits

                data = digits.load()
                models_dir.mkdir(parents=True, exist_ok=True)
                path = models_dir / f"digits_cls_seed0_e{args.epochs}.pth"
                if path.exists():
                    state = torch.load(path, weights_only=True)
                else:
                    state = digits.train(0, "cls", args.epochs, data, say)
                    torch.save(state, path)
                base = digits.reduced(state, "cls", "none")
                x = data[2]
                Ps = args.num_prop or PS[name]
                model_settings = {**settings, **digits.GTP}
            else:
                from gtp_ref.config import ViTConfig
                from gtp_ref.model import GTPViT

                torch.manual_seed(0)
                base = GTPViT(ViTConfig.of(**{**GEOMETRIES[name], "img_size": args.img_size})).eval()
                x, Ps, model_settings = x_photos, args.num_prop or PS[name], settings
            model_rows, grids = measure(name, base, x, Ps, model_settings, args.rounds)
            rows += model_rows
            if name != "digits" and shown is None:
                shown = (x[0], grids, name)
    except ValueError as e:
        p.error(str(e))
    print(table(rows), end="")
    results = {
        "command": "python -m gtp_ref.apps.features " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in settings.items() if k != "num_prop"},
        "rows": rows,
    }
    paths = [q for q in (json_out, fig_out if shown else None) if q]

    def write() -> list[Path]:
        if json_out:
            json_out.write_text(json.dumps(results, indent=1) + "\n")
        return ([json_out] if json_out else []) + ([figure(*shown, fig_out)] if fig_out and shown else [])

    return write_files(p, "--json-out / --figure", paths, write, kept="the table above") if paths else 0


if __name__ == "__main__":
    sys.exit(main())
