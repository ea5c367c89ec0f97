"""``python -m gtp_ref.apps.eval DIR``: top-1 / top-5 accuracy of the unreduced model, GTP, plain pruning
and ToMe on an image folder, at one setting or swept over P, alpha or M.

DIR holds one folder per class (``DIR/<class>/<image>``, the ImageNet validation layout that
torchvision's ImageFolder reads): the sorted folder names are the class indices 0, 1, ..., so
there must be as many folders as the model has classes.  The model: a timm model by name with a
checkpoint (``--timm NAME --checkpoint FILE``), a Hugging Face classifier (``--hf FOLDER``: what
``save_pretrained`` wrote; no download), or a preset with a state_dict (``--preset NAME
--state-dict FILE``); from Python, any models, e.g. ``gtp_ref.from_timm``'s (``evaluate``).
Images are preprocessed as the model expects (``gtp_ref.apps.preprocess``: timm's evaluation
transform, with Pillow and torch; an HF model's image processor config).

Methods (``--methods``, default all four): ``baseline`` (the model unreduced), ``gtp`` (GTP at
``--num-prop`` / ``--alpha`` / ``--num-neighbours`` / ``--graph`` / ``--selection`` /
``--sparsity``; default the paper's, ``gtp_ref.presets.paper_settings``: P = 8, mixed graph,
M = 4, ``mixed_attn_max``, theta = 0.6 (0.5 for the deit_base preset), alpha = 0.1, token sizes
on), ``prune`` (the same with alpha = 0: the selected tokens are dropped) and ``tome`` (ToMe with
r = P).  ``--sweep num-prop|alpha|num-neighbours --values ...`` evaluates every method it varies
at every value (alpha: GTP only; num-neighbours: GTP with each of ``--graphs``) in one pass over
the images, and
``--figure`` draws the top-1 accuracy against the swept value.

Every image is read once and run through every model.  A progress line goes to stderr; an
image that cannot be read is skipped with one line, and the count is in the summary and the
JSON.  ``--limit N`` evaluates N images drawn evenly from all classes (a fixed permutation).
The images/s reported are the models' forward passes alone, timed around each batch: a guide,
not a benchmark (``python -m gtp_ref.apps.bench throughput`` measures).
"""

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gtp_ref.apps import AUTOCAST
from gtp_ref.apps.images import ImageFolder, batches
from gtp_ref.cli import OneLineParser, output_path, write_files
from gtp_ref.settings import GTPSettings

METHODS = ("baseline", "gtp", "prune", "tome")
SWEEPS = ("num_prop", "alpha", "num_neighbours")  # --sweep num-prop | alpha | num-neighbours


# ---- the models --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One model to evaluate: the method and the GTP settings it varies (num_prop is ToMe's r for
    tome); the others are the run's (``reduced_model``'s ``base``)."""

    method: str
    num_prop: int = 0
    alpha: float = 0.1
    num_neighbours: int = 4
    graph: str = "mixed"

    @property
    def label(self) -> str:
        if self.method == "baseline":
            return "baseline"
        if self.method == "tome":
            return f"tome r={self.num_prop}"
        if self.method == "prune":
            return f"prune P={self.num_prop}"
        return f"gtp P={self.num_prop} alpha={self.alpha:g} {self.graph} M={self.num_neighbours}"


def settings_for(
    methods: Sequence[str],
    base: Setting,
    sweep: str | None = None,
    values: Sequence[float] = (),
    graphs: Sequence[str] = ("mixed",),
) -> list[Setting]:
    """The settings of a run: each method at ``base``, or swept over ``values`` of num_prop, alpha
    or num_neighbours (alpha: GTP only, and alpha = 0 is pruning; num_neighbours: GTP with each
    graph).  The baseline once."""
    out = [Setting("baseline")] if "baseline" in methods else []
    reduced = [m for m in methods if m != "baseline"]
    if sweep is None:
        out += [replace(base, method=m, alpha=0.0 if m == "prune" else base.alpha) for m in reduced]
    elif sweep == "num_prop":
        out += [
            replace(base, method=m, num_prop=int(v), alpha=0.0 if m == "prune" else base.alpha)
            for m in reduced
            for v in values
        ]
    elif sweep == "alpha":
        out += [replace(base, method="gtp", alpha=float(v)) for v in values]
    else:
        out += [replace(base, method="gtp", num_neighbours=int(v), graph=g) for g in graphs for v in values]
    return out


def reduced_model(net: nn.Module, backbone: Any, setting: Setting, base: GTPSettings) -> nn.Module:
    """The model of ``setting`` on net's weights, shared (built on the meta device, then the
    weights assigned: a sweep of many settings holds one copy): baseline: net itself; gtp /
    prune: a GTPViT with ``base`` but for what the setting varies; tome: a ToMeViT (ValueError
    where ToMe is not defined for the backbone: RoPE, relative-position biases, registers)."""
    from gtp_ref.model import GTPViT
    from gtp_ref.tome import ToMeViT

    if setting.method == "baseline":
        return net
    with torch.device("meta"):
        if setting.method == "tome":
            model = ToMeViT(backbone.config, stem=backbone.stem, r=setting.num_prop, fused_attn=True)
        else:
            gtp = base.replace(
                num_prop=setting.num_prop,
                alpha=setting.alpha,
                num_neighbours=setting.num_neighbours,
                graph=setting.graph,
            )
            model = GTPViT(backbone.config, stem=backbone.stem, **gtp.kwargs())
    model.load_state_dict(backbone.state, strict=True, assign=True)
    return model.eval()


# ---- the evaluation ----------------------------------------------------------------------------------
@dataclass
class Result:
    """Correct top-1 / top-5 counts over ``images``, and the forward passes' seconds."""

    images: int = 0
    top1: int = 0
    top5: int = 0
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        n = max(self.images, 1)
        return {
            "images": self.images,
            "top1": 100 * self.top1 / n,
            "top5": 100 * self.top5 / n,
            "img_per_s": self.images / self.seconds if self.seconds else None,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    models: dict[str, nn.Module],
    root: str | Path | ImageFolder,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    preprocessing: Any = None,
    workers: int = 4,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 of every model on the image folder at ``root`` (a path, or its
    ``ImageFolder.scan``), in one pass over the images.

    models: {name: model} (eval mode; logits over the folder's classes, in sorted folder order);
    preprocessing: a ``gtp_ref.apps.preprocess.Preprocessing`` (default: the first model's).
    -> {"results": {name: {"images", "top1", "top5", "img_per_s"}}, "images", "skipped":
    [[path, why], ...], "classes", "empty_classes"}.  ValueError (one line) for a folder that
    cannot be evaluated or models that do not fit it.
    """
    from gtp_ref.apps.preprocess import Preprocessing

    if not models:
        raise ValueError("models: give at least one")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: must be >= 1 (or None for every image)")
    if dtype not in AUTOCAST:
        raise ValueError(f"dtype={dtype!r}: one of {', '.join(AUTOCAST)}")
    folder = root if isinstance(root, ImageFolder) else ImageFolder.scan(root)
    root = folder.root
    for name, model in models.items():
        classes = getattr(model, "num_classes", None)
        if classes is not None and classes != len(folder.classes):
            raise ValueError(
                f"{name}: the model has {classes} classes, {str(root)!r} has {len(folder.classes)} "
                "class folders (their sorted order gives the labels)"
            )
    preprocessing = preprocessing or Preprocessing.of(next(iter(models.values())))
    dev, amp = torch.device(device), AUTOCAST[dtype]
    samples = folder.subset(limit)
    results = {name: Result() for name in models}
    skipped: list[list[str]] = []
    say = progress or (lambda message: None)

    def bad(path: Path, why: str) -> None:
        skipped.append([str(path), why])
        say(f"skipped {why}")

    done, t0 = 0, time.perf_counter()
    for x, y in batches(samples, preprocessing, batch_size, bad, workers):
        x, y = x.to(dev), y.to(dev)
        for name, model in models.items():
            _sync(dev)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
            _sync(dev)
            r = results[name]
            r.seconds += time.perf_counter() - start
            top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices  # (b, 5)
            r.top1 += int((top[:, 0] == y).sum())
            r.top5 += int((top == y[:, None]).any(dim=-1).sum())
            r.images += len(y)
        done += len(y)
        first = results[next(iter(models))]
        say(
            f"{done + len(skipped)}/{len(samples)} images, {time.perf_counter() - t0:.0f} s; "
            f"{next(iter(models))}: top-1 {100 * first.top1 / max(first.images, 1):.1f} %"
        )
    return {
        "results": {name: r.row() for name, r in results.items()},
        "images": len(samples),
        "skipped": skipped,
        "classes": len(folder.classes),
        "empty_classes": folder.empty,
    }


# ---- the command -------------------------------------------------------------------------------------
def table(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['model']}: {doc['images']} images of {doc['classes']} classes in {doc['root']} "
        f"({doc['device']}, {doc['dtype']})",
        "",
        f"{'method':>8} {'P':>3} {'alpha':>6} {'graph':>9} {'M':>3} {'top-1 %':>8} {'top-5 %':>8} "
        f"{'img/s':>8}",
    ]
    for r in doc["rows"]:
        gtp = r["method"] == "gtp"
        speed = "-" if r["img_per_s"] is None else f"{r['img_per_s']:.1f}"
        P = r["num_prop"] if r["method"] != "baseline" else ""
        alpha = f"{r['alpha']:g}" if r["method"] in ("gtp", "prune") else ""
        lines.append(
            f"{r['method']:>8} {P:>3} {alpha:>6} {r['graph'] if gtp else '':>9} "
            f"{r['num_neighbours'] if gtp else '':>3} "
            f"{r['top1']:>8.2f} {r['top5']:>8.2f} {speed:>8}"
        )
    if doc["skipped"]:
        lines.append(
            f"\n{len(doc['skipped'])} image(s) could not be read and were skipped (listed in the JSON)"
        )
    return "\n".join(lines) + "\n"


def figure(doc: dict[str, Any], path: Path) -> None:
    """Top-1 accuracy against the swept value, one line per method (and graph); the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gtp_ref.style import COLORS

    sweep = doc["sweep"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in doc["rows"]:
        if r["method"] == "baseline":
            ax.axhline(r["top1"], color="0.4", ls="--", lw=1, label="unreduced")
            continue
        key = (
            f"GTP, {r['graph']} graph" if (sweep == "num_neighbours" or r["method"] == "gtp") else r["method"]
        )
        key = {"prune": "pruning (α = 0)", "tome": "ToMe"}.get(key, key)
        lines.setdefault(key, []).append((r[sweep], r["top1"]))
    method_colors = {"ToMe": COLORS["tome"], "pruning (α = 0)": COLORS["pruning"]}
    for key, pts in lines.items():
        pts.sort()  # a sweep over M draws one GTP line per graph: those take matplotlib's cycle
        color = method_colors.get(key, COLORS["gtp"] if sweep != "num_neighbours" else None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key, color=color)
    name = {
        "num_prop": "tokens removed per block P (ToMe: r)",
        "alpha": "propagation weight α",
        "num_neighbours": "semantic neighbours M",
    }[sweep]
    ax.set(xlabel=name, ylabel="top-1 accuracy (%)", title=f"{doc['model']}: {doc['images']} images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from gtp_ref._checks import GRAPHS, SELECTIONS
    from gtp_ref.presets import FACTORIES, paper_settings

    p = OneLineParser(prog="python -m gtp_ref.apps.eval", description=__doc__.splitlines()[0])
    p.add_argument("folder", metavar="DIR", help="one folder per class, the images inside")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--timm", metavar="NAME", help="a timm model name (with --checkpoint)")
    src.add_argument(
        "--hf",
        metavar="NAME",
        help="a Hugging Face model: a save_pretrained folder, or a model type (random weights)",
    )
    src.add_argument("--preset", choices=list(FACTORIES), help="a gtp_ref preset (with --state-dict)")
    p.add_argument("--checkpoint", metavar="FILE", help="with --timm: the state_dict to load")
    p.add_argument("--state-dict", metavar="FILE", help="with --preset: the state_dict to load")
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="K",
        help="build the model with K classes (a checkpoint fine-tuned on K classes; default the model's)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="default all four (ToMe left out, with a warning, where it is not defined for the model)",
    )
    paper = paper_settings()  # the defaults: the paper's (gtp_ref.presets.paper_settings; theta per preset)
    p.add_argument(
        "--num-prop",
        type=int,
        default=paper.num_prop,
        metavar="P",
        help=f"tokens removed per block (ToMe's r; default {paper.num_prop})",
    )
    p.add_argument(
        "--alpha", type=float, default=paper.alpha, help=f"GTP's propagation weight (default {paper.alpha})"
    )
    p.add_argument(
        "--num-neighbours",
        type=int,
        default=paper.num_neighbours,
        metavar="M",
        help=f"semantic neighbours (default {paper.num_neighbours})",
    )
    p.add_argument("--graph", choices=GRAPHS, default=paper.graph)
    p.add_argument(
        "--graphs",
        nargs="+",
        choices=GRAPHS,
        default=["semantic", "mixed"],
        help="with --sweep num-neighbours: the graphs compared (default semantic and mixed)",
    )
    p.add_argument("--selection", choices=SELECTIONS, default=paper.selection)
    p.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help=f"theta (default the paper's for the preset: {paper.sparsity}, 0.5 for deit_base)",
    )
    p.add_argument(
        "--sweep",
        choices=[s.replace("_", "-") for s in SWEEPS],
        help="vary num-prop, alpha or num-neighbours over --values",
    )
    p.add_argument("--values", type=float, nargs="+", help="the swept values")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="evaluate N images drawn from every class"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(AUTOCAST), help="fp16 / bf16: autocast")
    p.add_argument("--workers", type=int, default=4, help="threads reading images (default 4)")
    p.add_argument("--json-out", metavar="FILE.json")
    p.add_argument("--figure", metavar="FILE.png", help="with --sweep: top-1 against the swept value")
    args = p.parse_args(argv)
    args.sweep = None if args.sweep is None else args.sweep.replace("-", "_")

    # everything checked before any image is read
    if args.timm is None and args.checkpoint is not None:
        p.error(
            "--checkpoint goes with --timm NAME (a preset takes --state-dict; an --hf folder holds "
            "its weights)"
        )
    if args.preset is None and args.state_dict is not None:
        p.error("--state-dict goes with --preset NAME (a timm model takes --checkpoint)")
    if (args.sweep is None) != (args.values is None):
        p.error("--sweep and --values go together")
    if args.figure is not None and args.sweep is None:
        p.error("--figure draws a sweep: give --sweep and --values")
    for option, value in (
        ("--batch-size", args.batch_size),
        ("--limit", args.limit),
        ("--workers", args.workers),
        ("--num-classes", args.num_classes),
    ):
        if value is not None and value < 1:
            p.error(f"{option} {value}: must be >= 1")
    for option in ("alpha", "sparsity", "values"):
        value = getattr(args, option)
        bad = [
            v
            for v in (value if isinstance(value, list) else [value])
            if v is not None and not math.isfinite(v)
        ]
        if bad:
            p.error(f"--{option} {bad[0]}: must be a finite number")
    if args.sweep in ("num_prop", "num_neighbours") and any(v != int(v) or v < 0 for v in args.values):
        p.error(f"--values for --sweep {args.sweep.replace('_', '-')}: whole numbers >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    json_out = output_path(p, "--json-out", args.json_out, suffixes=[".json"])
    fig_out = output_path(p, "--figure", args.figure, suffixes=[".png"])
    try:
        folder = ImageFolder.scan(args.folder)
    except ValueError as e:
        p.error(str(e))
    gtp = paper_settings(
        args.preset,
        selection=args.selection,
        **({} if args.sparsity is None else {"sparsity": args.sparsity}),
    )
    try:
        from gtp_ref.apps.loading import backbone_of, hf_model, preset_model, timm_model

        create = {} if args.num_classes is None else {"num_classes": args.num_classes}
        if args.timm:
            net = timm_model(args.timm, args.checkpoint, **create)
        elif args.hf:
            net = hf_model(args.hf, **create)
        else:
            net = preset_model(args.preset, args.state_dict, **create)
        net = net.to(args.device)
        backbone = backbone_of(net)
        base = Setting(
            "gtp",
            num_prop=args.num_prop,
            alpha=args.alpha,
            num_neighbours=args.num_neighbours,
            graph=args.graph,
        )
        methods = list(METHODS) if args.methods is None else args.methods
        if args.methods is None and "tome" in methods:  # by default ToMe only where it is defined
            try:
                reduced_model(net, backbone, Setting("tome"), gtp)
            except ValueError as e:
                methods.remove("tome")
                print(
                    f"python -m gtp_ref.apps.eval: warning: tome left out: {' '.join(str(e).split())[:300]}",
                    file=sys.stderr,
                )
        settings = settings_for(methods, base, args.sweep, args.values or (), args.graphs)
        models = {s.label: reduced_model(net, backbone, s, gtp) for s in settings}
    except (TypeError, ValueError) as e:
        p.error(" ".join(str(e).split())[:400])
    for name in folder.empty:
        print(f"python -m gtp_ref.apps.eval: warning: class folder {name!r} holds no images", file=sys.stderr)
    model_name = (
        f"{args.timm} ({args.checkpoint})"
        if args.timm
        else f"{args.hf} (Hugging Face)"
        if args.hf
        else f"{args.preset} ({args.state_dict or 'random'})"
    )
    tty = sys.stderr.isatty()

    def progress(message: str) -> None:
        if message.startswith("skipped"):
            print(("\n" if tty else "") + f"python -m gtp_ref.apps.eval: {message}", file=sys.stderr)
        else:
            print(message, end="\r" if tty else "\n", file=sys.stderr, flush=True)

    try:
        out = evaluate(
            models,
            folder,
            batch_size=args.batch_size,
            limit=args.limit,
            device=args.device,
            dtype=args.dtype,
            workers=args.workers,
            progress=progress,
        )
    except ValueError as e:
        p.error(str(e))
    if tty:
        print(file=sys.stderr)
    rows = [{**asdict(s), **out["results"][s.label]} for s in settings]
    doc = {
        "model": model_name,
        "root": str(args.folder),
        "device": args.device,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "sweep": args.sweep,
        "command": "python -m gtp_ref.apps.eval " + " ".join(sys.argv[1:] if argv is None else argv),
        "gtp": {k: getattr(gtp, k) for k in ("selection", "sparsity", "token_scale", "propagation")},
        **{k: v for k, v in out.items() if k != "results"},
        "rows": rows,
    }
    print(table(doc), end="")
    files = [f for f in (json_out, fig_out) if f is not None]

    def write() -> list[Path]:
        if json_out is not None:
            json_out.write_text(json.dumps(doc, indent=1) + "\n")
        if fig_out is not None:
            figure(doc, fig_out)
        return files

    status = write_files(p, "--json-out / --figure", files, write, kept="the table above") if files else 0
    return status or (1 if len(out["skipped"]) == out["images"] else 0)


if __name__ == "__main__":
    sys.exit(main())
