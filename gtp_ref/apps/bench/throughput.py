"""``python -m gtp_ref.apps.bench throughput``: images per second of the unreduced model, GTP and ToMe.

Per model, batch and dtype, every method at every P (``--num-prop``; ToMe's r) is timed in the same
interleaved rounds (``common.measure``), so the speed-ups -- each against the unreduced model with fused
attention (``baseline_fused``, timm's default) -- compare like with like.  ``expected`` is the
speed-up the backbone's MACs allow (``complexity.backbone``): what a reduction would give if its
own overhead were free and time followed MACs.

Methods: ``baseline_fused`` / ``baseline_explicit`` (the plain ViT with
``scaled_dot_product_attention`` / the explicit softmax), ``gtp_dense`` / ``gtp_sparse`` /
``gtp_fast`` (GTP at the paper's settings on each backend), ``tome``; and, only when named,
``pruned_free``: the fused-attention ViT that simply drops its last P image tokens per block,
GTP's token schedule at no cost of choosing them -- the bound any pruning method works
under (GTP's overhead is its time minus this one's; with --timm / --hf on the converted
model).  ``--img-size`` runs the presets at another resolution (N = (size / patch)^2 + 1).  A
``+graph`` suffix (CUDA only) replays the model from a CUDA graph; ``+compile`` runs
``torch.compile(model)`` (on CUDA replayed from a CUDA graph too), and is only run when named.
On the CPU the default model is a tiny smoke geometry; name ``--models deit_small`` for a
measurement.

``--timm NAME [--checkpoint FILE]`` measures your timm model instead: the baseline is timm's own
model (``baseline_fused``: timm's fused attention), GTP and ToMe come from it by
``gtp_ref.from_timm`` / ``tome_from_timm`` (random weights unless a checkpoint is given; the P
values default to those of 4, 8, 12 and 16 that the model's token count allows).  ``--hf NAME``
does the same for a Hugging Face model (a ``save_pretrained`` folder, or a model type with random
weights; no download): the baseline is the HF model returning its result tensor (its logits or
pooled output; HF's attention implementation, sdpa by default), GTP and ToMe come from
``gtp_ref.from_hf`` / ``tome_from_hf``.
"""

import argparse
from collections.abc import Callable
from typing import Any

import torch

from complexity.backbone import backbone_macs
from gtp_ref.apps import AUTOCAST
from gtp_ref.apps.bench import common
from gtp_ref.config import PRESETS, ViTConfig
from gtp_ref.presets import PAPER_NUM_PROP, paper_settings
from gtp_ref.schedule import per_block, prop_schedule, tome_schedule
from gtp_ref.vit import ViT

# the tokens removed per block (P, ToMe's r) each model is measured at by default: the supplement's sweeps
SCHEDULES = {**{name: list(P) for name, P in PAPER_NUM_PROP.items()}, "smoke": [1, 2]}
SMOKE = ViTConfig.of(
    name="smoke", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
)
METHODS = ("baseline_fused", "baseline_explicit", "gtp_dense", "gtp_sparse", "gtp_fast", "tome")
# Only when named: free pruning -- the backbone at the same token schedule with fused attention and no
# selection cost (the last P image tokens dropped): what any pruning method could reach at best.
PRUNED = ("pruned_free",)
GRAPHED = ("baseline_fused+graph", "gtp_fast+graph", "tome+graph")
COMPILED = ("baseline_fused+compile", "gtp_dense+compile", "gtp_fast+compile", "tome+compile")


def add_arguments(sub: Any) -> None:
    tp = sub.add_parser("throughput", help="img/s of the unreduced model, GTP and ToMe, and their speed-ups")
    tp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    tp.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(SCHEDULES),
        help="default: the four paper backbones on CUDA, 'smoke' on the CPU",
    )
    tp.add_argument(
        "--timm",
        default=None,
        metavar="NAME",
        help="measure this timm model (timm.create_model(NAME)) instead of --models",
    )
    tp.add_argument(
        "--hf",
        default=None,
        metavar="NAME",
        help="measure this Hugging Face model (a save_pretrained folder or a model type) instead of --models",
    )
    tp.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="with --timm: a state_dict to load into it (torch.save(model.state_dict(), FILE))",
    )
    tp.add_argument(
        "--num-prop",
        type=int,
        nargs="+",
        default=None,
        metavar="P",
        help="tokens removed per block, P (ToMe's r; default: the supplement's values for the model)",
    )
    tp.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=None,
        help="default on CUDA: 1 and 256 (64 for vit_large / eva_large); CPU: 2",
    )
    tp.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(AUTOCAST),
        help="default: fp32 and fp16 on CUDA, fp32 on the CPU (fp16 / bf16: autocast)",
    )
    tp.add_argument(
        "--img-size",
        type=int,
        default=None,
        metavar="PX",
        help="run the presets at this image size (a multiple of the patch; default: the preset's)",
    )
    tp.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=list(METHODS + GRAPHED + COMPILED + PRUNED),
        help="default: all but +compile (the +graph ones on CUDA only)",
    )
    common.add_output_options(
        tp, "interleaved timing rounds (default 7; >= 5 for a measurement, 1 for a smoke run)"
    )
    tp.add_argument("--figure", default=None, metavar="PNG", help="also draw the speed-ups into this PNG")
    tp.add_argument(
        "--check",
        action="store_true",
        help="check the arguments (all but the device's presence) and exit: nothing is built or measured",
    )


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from gtp_ref.cli import output_path

    cuda = args.device == "cuda"
    foreign = "--timm" if args.timm is not None else "--hf" if args.hf is not None else None
    if args.timm is not None and args.hf is not None:
        parser.error("--timm and --hf: measure one model or the other")
    if args.checkpoint is not None and args.timm is None:
        parser.error(
            "--checkpoint needs --timm NAME (the presets load no weights; an --hf folder holds its own)"
        )
    if foreign is not None:
        if args.img_size is not None:
            parser.error(
                f"--img-size goes with the presets (--models); a {foreign} model runs at the size "
                "it was built for"
            )
        _load_foreign(parser, args, foreign)
    args.models = args.models or (
        ["deit_small", "deit_base", "vit_large", "eva_large"] if cuda else ["smoke"]
    )
    args.dtypes = args.dtypes or (["fp32", "fp16"] if cuda else ["fp32"])
    args.methods = args.methods or list(METHODS + GRAPHED if cuda else METHODS)
    if foreign is not None:
        g = geometry(args.models[0])
        unavailable = {"baseline_explicit": f"the baseline is the {foreign} model itself"}
        if g.num_prefix_tokens > int(g.prefix.class_token) or g.positions.rope or g.positions.attn_bias:
            unavailable["tome"] = (
                "ToMe is not defined for this model: prefix tokens beyond [CLS] (registers, a "
                "distillation token), RoPE or a relative-position bias"
            )
        asked = [m for m in args.methods if m.split("+")[0] in unavailable]
        if asked and set(args.methods) != set(METHODS + GRAPHED) and set(args.methods) != set(METHODS):
            parser.error(f"--methods {asked[0]} with {foreign}: {unavailable[asked[0].split('+')[0]]}")
        args.methods = [m for m in args.methods if m.split("+")[0] not in unavailable]
    common.positive(parser, "--repeats", args.repeats)
    if args.repeats < 5 and args.models != ["smoke"] and foreign is None:
        parser.error(
            f"--repeats {args.repeats}: a measurement needs >= 5 rounds (the smoke model accepts fewer)"
        )
    for b in args.batches or []:
        common.positive(parser, "--batches", b)
    if not cuda and any(m.endswith("+graph") for m in args.methods):
        parser.error("--methods: the +graph methods need --device cuda")
    for model in args.models:
        if args.img_size is not None:
            patch = geometry(model).patches.patch_size
            if args.img_size < patch or args.img_size % patch:
                parser.error(
                    f"--img-size {args.img_size}: a positive multiple of {model}'s patch size {patch}"
                )
            IMG_SIZE[model] = args.img_size
        g = geometry(model)
        for P in args.num_prop or []:
            try:
                prop_schedule(P, g.depth, g.num_image_tokens)
                per_block("r", P, g.depth)
            except (TypeError, ValueError) as e:
                parser.error(f"--num-prop {P} for {model}: {e}")
    output_path(parser, "--figure", args.figure, suffixes=[".png"])
    output_path(parser, "--json-out", args.json_out, suffixes=[".json"])


def _load_foreign(parser: argparse.ArgumentParser, args: argparse.Namespace, option: str) -> None:
    """--timm NAME [--checkpoint FILE] or --hf NAME: the library importable, the model known and
    supported, the checkpoint loadable -- all before anything is measured; args.models becomes
    [NAME]."""
    from gtp_ref.apps.loading import backbone_of, hf_model, timm_model

    name = args.timm if option == "--timm" else args.hf
    if args.models:
        parser.error(f"{option} and --models: measure one or the other")
    try:
        net = timm_model(name, args.checkpoint) if option == "--timm" else hf_model(name)
    except ValueError as e:
        parser.error(
            f"{option} {name!r}{f' --checkpoint {args.checkpoint!r}' if args.checkpoint else ''}: {e}"
        )
    try:
        g = backbone_of(net).config.replace(name=name)
    except ValueError as e:
        parser.error(f"{option} {name!r}: {e}")
    FOREIGN[name] = (net.eval(), g)
    SCHEDULES[name] = [P for P in (4, 8, 12, 16) if P * g.depth < g.num_image_tokens]
    args.models = [name]


# --timm / --hf NAME: the model (an HFResult for --hf) and its geometry, by name (filled by _load_foreign)
FOREIGN: dict[str, tuple[torch.nn.Module, ViTConfig]] = {}


IMG_SIZE: dict[str, int] = {}  # --img-size, by model (filled by validate)


def geometry(model: str) -> ViTConfig:
    """The config of ``model``: a preset's, the smoke model's (at --img-size) or a --timm / --hf
    model's."""
    if model in FOREIGN:
        return FOREIGN[model][1]
    g = SMOKE if model == "smoke" else PRESETS[model]
    return g.replace(img_size=IMG_SIZE[model]) if model in IMG_SIZE else g


class PrunedViT(torch.nn.Module):
    """Free pruning: a ViT (fused attention) that drops its last P image tokens after each block's
    attention -- GTP's token schedule at no selection or propagation cost.  The remaining tokens
    keep their patches' RoPE rows and relative-position bias, so it runs any backbone GTP runs
    (a preset's ViT, or the model ``from_timm`` / ``from_hf`` makes)."""

    def __init__(self, vit: ViT, num_prop: int = 0) -> None:
        super().__init__()
        self.vit = vit
        self.num_prop = prop_schedule(num_prop, len(vit.blocks), vit.num_image_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.embed(x)
        c, positions = vit.num_prefix_tokens, vit.config.positions
        for l, (block, P) in enumerate(zip(vit.blocks, self.num_prop)):
            patches = None  # the first n_l patches, in order: the rows of the kept tokens
            if positions.rope is not None or positions.attn_bias:
                patches = torch.arange(x.shape[1] - c, device=x.device)[None]
            attn, _ = block.attn(
                block.attn_in(x),
                fused_attn=True,
                rope_rows=vit.rope_rows_for(l, patches),
                bias=vit.bias_for(l, patches),
            )
            x = block.attn_add(x, attn)
            x = x[:, : x.shape[1] - P]
            x = block.mlp_add(x)
        return vit.forward_head(x)


def build_model(model: str, method: str, P: int, device: str) -> torch.nn.Module:
    """A randomly initialised model of the geometry running ``method`` at P (or r), eval mode."""
    from gtp_ref.model import GTPViT
    from gtp_ref.tome import ToMeViT

    base = method.split("+")[0]
    if model in FOREIGN:
        return _from_foreign(FOREIGN[model][0], base, P, device)
    config = geometry(model)
    with torch.device(device):  # initialised where it runs: large models build in seconds, not minutes
        if base.startswith("baseline"):
            net = ViT(config, fused_attn=base == "baseline_fused")
        elif base == "pruned_free":
            net = PrunedViT(ViT(config, fused_attn=True), num_prop=P)
        elif base == "tome":
            net = ToMeViT(config, r=P, fused_attn=True)
        else:
            net = GTPViT(
                config,
                **paper_settings(
                    model if model in PRESETS else None, num_prop=P, backend=base.split("_")[1]
                ).kwargs(),
            )
    return net.eval()


def _from_foreign(net: torch.nn.Module, base: str, P: int, device: str) -> torch.nn.Module:
    """The --timm / --hf model itself (the baseline) or GTP / ToMe made from it."""
    import copy

    from gtp_ref.apps.loading import gtp_from, tome_from

    if base == "baseline_explicit":
        raise ValueError(
            "baseline_explicit is not available for --timm / --hf (the baseline is the model itself)"
        )
    if base == "baseline_fused":
        return copy.deepcopy(net).to(device).eval()
    if base == "tome":
        return tome_from(net, r=P).to(device).eval()
    if base == "pruned_free":
        return PrunedViT(gtp_from(net, num_prop=0, sparsity=1.0), num_prop=P).to(device).eval()
    return gtp_from(net, **paper_settings(num_prop=P, backend=base.split("_")[1]).kwargs()).to(device).eval()


def expected_speedup(g: ViTConfig, method: str, P: int) -> float:
    """Backbone MACs unreduced / with P removed per block (ToMe: r, clamped as ToMe does)."""
    removed = (
        tome_schedule(P, g.depth, g.num_tokens, int(g.prefix.class_token))
        if method.startswith("tome")
        else prop_schedule(P, g.depth, g.num_image_tokens)
    )
    return backbone_macs(g)["total"] / backbone_macs(g, removed)["total"]


def forward_fn(net: torch.nn.Module, device: str, dtype: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> net(x) without gradients, under autocast for fp16 / bf16."""
    amp = AUTOCAST[dtype]

    def forward(x):
        with torch.no_grad(), torch.autocast(device, dtype=amp, enabled=amp is not None):
            return net(x)

    return forward


def prepared(
    net: torch.nn.Module, method: str, x: torch.Tensor, device: str, dtype: str
) -> Callable[[], Any]:
    """The callable timed for ``method``: eager, compiled, and / or replayed from a CUDA graph."""
    from gtp_ref.cuda_graphs import cuda_graphed

    if method.endswith("+compile"):
        net = torch.compile(net)  # compiled by the first call (the graph capture's or the warm-up)
    forward = forward_fn(net, device, dtype)
    if method.endswith("+graph") or (method.endswith("+compile") and device == "cuda"):
        forward = cuda_graphed(forward, x)
    return lambda: forward(x)


def _compile_limits(n_models: int) -> None:
    """Each compiled model is a recompilation of the same forward: allow them all, and fail
    loudly rather than run eager quietly past the limit."""
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), 4 * n_models))
    if hasattr(dynamo, "fail_on_recompile_limit_hit"):
        dynamo.fail_on_recompile_limit_hit = True


def run(args: argparse.Namespace) -> Any:
    rows = []
    for model in args.models:
        g = geometry(model)
        schedule = args.num_prop or SCHEDULES[model]
        cuda = args.device == "cuda"
        batches = args.batches or ([1, 64 if model in ("vit_large", "eva_large") else 256] if cuda else [2])
        for batch in batches:
            for dtype in args.dtypes:
                x = torch.randn(batch, g.patches.in_chans, *g.patches.img_size, device=args.device)
                configs = [
                    (m, P) for m in args.methods for P in ([0] if m.startswith("baseline") else schedule)
                ]
                torch.compiler.reset()
                _compile_limits(len(configs))
                fns = {}
                for method, P in configs:
                    common.progress(f"{model} batch {batch} {dtype}: building {method} P={P}")
                    fns[(method, P)] = prepared(
                        build_model(model, method, P, args.device), method, x, args.device, dtype
                    )
                timings = common.measure(
                    fns,
                    args.device,
                    args.repeats,
                    min_block_s=0.1,
                    progress=lambda m: common.progress(f"{model} batch {batch} {dtype}: {m}"),
                )
                for (method, P), t in timings.items():
                    rows.append(
                        {
                            "model": model,
                            "method": method,
                            "num_prop": P,
                            "batch": batch,
                            "dtype": dtype,
                            "img_per_s": batch / t.median,
                            "img_per_s_q1": batch / t.quartiles[1],
                            "img_per_s_q3": batch / t.quartiles[0],
                            **t.row(1e3, "ms"),
                            "expected_speedup": expected_speedup(g, method, P) if P else 1.0,
                        }
                    )
                add_speedups(rows)
                group = [r for r in rows if (r["model"], r["batch"], r["dtype"]) == (model, batch, dtype)]
                for line in table(group, common.environment(args.device)).splitlines()[4:]:
                    common.progress(f"| {line}")  # this group's rows as soon as they are measured
                if getattr(args, "json_out", None):  # and on disk: a run cut short keeps what it measured
                    common.write_partial(args.json_out, {**common.environment(args.device), "rows": rows})
                del fns, timings
    return rows


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """speedup = img/s over the unreduced model with fused attention in the same execution mode
    (eager, +graph or +compile) and the same run (model, batch, dtype); over the eager one where
    that mode's baseline was not measured."""
    base = {
        (r["model"], r["batch"], r["dtype"], r["method"]): r["img_per_s"]
        for r in rows
        if r["method"].startswith("baseline_fused")
    }
    for r in rows:
        key = (r["model"], r["batch"], r["dtype"])
        mode = r["method"].partition("+")[2]
        b = base.get((*key, "baseline_fused" + (f"+{mode}" if mode else ""))) or base.get(
            (*key, "baseline_fused")
        )
        r["speedup"] = r["img_per_s"] / b if b else None


def table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out = [
        "throughput: images / s (median of interleaved rounds, interquartile range); speed-up over the "
        "unreduced model with fused attention in the same run and execution mode (eager, +graph, +compile); "
        "expected: the backbone-MAC ratio",
        common.header(env),
        "",
    ]
    mw = max([10] + [len(r["model"]) for r in rows])
    out += [
        f"{'model':>{mw}} {'batch':>5} {'dtype':>5} {'method':>22} {'P':>3} {'img/s':>10} {'IQR img/s':>21} "
        f"{'speed-up':>8} {'expected':>8}"
    ]
    for r in rows:
        speedup = f"{r['speedup']:8.3f}" if r["speedup"] else f"{'':>8}"
        timing = common.timing_cells(
            r["img_per_s"], r["img_per_s_q1"], r["img_per_s_q3"], r["noisy"], 10, 10, 1
        )
        out.append(
            f"{r['model']:>{mw}} {r['batch']:>5} {r['dtype']:>5} {r['method']:>22} {r['num_prop']:>3} "
            f"{timing} {speedup} {r['expected_speedup']:8.2f}"
        )
    out += common.noisy_note(rows, "; rerun before trusting it")
    out += [""] + verdicts(rows)
    return "\n".join(out) + "\n"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per (model, batch, dtype, method): faster than the unreduced model or not."""
    lines = []
    groups = {}
    for r in rows:
        if r["num_prop"] and r["speedup"] is not None:
            groups.setdefault((r["model"], r["batch"], r["dtype"], r["method"]), []).append(r)
    for (model, batch, dtype, method), rs in groups.items():
        slower = [r for r in rs if r["speedup"] < 1.0]
        where = f"{model}, batch {batch}, {dtype}: {method}"
        if not slower:
            lines.append(
                f"{where} is faster than the unreduced model at every P "
                f"({min(r['speedup'] for r in rs):.2f}-{max(r['speedup'] for r in rs):.2f}x)."
            )
        else:
            lines.append(
                f"{where} is SLOWER than the unreduced model at P = "
                f"{', '.join(str(r['num_prop']) for r in slower)} "
                f"({', '.join(format(r['speedup'], '.2f') + 'x' for r in slower)})."
            )
    return lines
