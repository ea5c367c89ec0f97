"""Benchmarks.  ``python -m gtp_ref.bench scaling|throughput|threshold|attention|profile|plot ...``.

scaling: the token graph plus 12 layers of selection and graph propagation (random scores,
P = n/64 per layer, token sizes on, B = 2, C = 64, mixed graph with M = 8) for grids
14x14, 32x32 and 64x64, on both backends: wall time (median of repeats, with min and max)
and the peak memory the work adds on top of its inputs.  Ratios sparse / dense are measured in
the same run.  Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the
allocation timeline of ``torch.profiler`` (profile_memory=True; it sees every tensor
allocation and free, but not an op's internal scratch space freed before the op returns).

throughput: images per second of the plain ViT (fused and explicit attention), GTP at the
paper's settings (each backend) and ToMe, at the P / r of supplement Tables 1-3; warm-up,
median of >= 5 repeats with min and max, the ideal speed-up from the backbone MAC ratio;
``--json`` and ``--figure PATH``.  On the CPU it defaults to a tiny smoke model.  Methods ending in
``+graph`` (CUDA only) replay the model from a CUDA graph; ``+compile`` (asked for by name, since
compiling takes a minute per model) runs ``torch.compile(model)`` (Inductor, default mode), on
CUDA replayed from a CUDA graph as well, so it compares with ``+graph``.

threshold: the attention-sparsity threshold alone (k-th smallest of each head's N^2 entries) by
every available method -- ``kthvalue``, ``topk``, the Triton candidates on CUDA -- each checked
exact against ``kthvalue``.  attention: the attention-map stage alone (logits and softmax, float32
out) by torch, by the fast backend's fused path and by a one-kernel Triton candidate, each with its
largest difference from torch's map.  profile: a ``torch.profiler`` table of one configuration's forward.
plot: redraws the throughput figure from ``--json-out`` files (no GPU needed).
scaling, throughput and threshold take ``--json-out PATH`` to keep their rows (plot reads them back).
"""
import importlib
import json
import statistics
import sys
import time

import torch

from complexity._cli import OneLineParser, write_files

GRIDS = (14, 32, 64)
LAYERS, BATCH, CHANNELS, NEIGHBOURS, ALPHA = 12, 2, 64, 8, 0.1


def scaling_workload(backend, side, device, seed=0):
    """Inputs and a closure running token_graph + LAYERS x (select + propagate)."""
    ops = importlib.import_module(f"gtp_ref.{backend}")
    g = torch.Generator(device=device).manual_seed(seed)
    n = side * side
    x0 = torch.randn(BATCH, 1 + n, CHANNELS, generator=g, device=device)  # [CLS] + grid
    scores = [torch.rand(BATCH, n - l * (n // 64), generator=g, device=device) for l in range(LAYERS)]
    P = n // 64

    def run():
        x, s = x0, torch.ones(BATCH, 1 + n, device=device)
        G = ops.token_graph(x[:, 1:], (side, side), "mixed", NEIGHBOURS)
        for l in range(LAYERS):
            kept, prop = ops.select_tokens(scores[l], P)
            x, G, s = ops.propagate(x, G, kept, prop, ALPHA, s)
        return x

    return run


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_it(run, device, repeats, warmup=2):
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_added_bytes(run, device):
    """Largest amount of memory the call holds at once beyond what existed before it."""
    if device == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        _sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage if e.name != "[memory]"
                      else e.cpu_memory_usage) for e in prof.events()
                     if e.name == "[memory]" or not e.cpu_children)
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return peak


def scaling(device="cpu", repeats=7, grids=GRIDS, progress=None):
    rows = []
    for side in grids:
        for backend in ("dense", "sparse"):
            if progress:
                progress(f"{side}x{side} {backend} ...")
            run = scaling_workload(backend, side, device)
            times = time_it(run, device, repeats)
            rows.append({"grid": f"{side}x{side}", "n": side * side, "backend": backend,
                         "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                         "max_ms": 1e3 * max(times), "peak_mb": peak_added_bytes(run, device) / 2**20})
    for dense, sparse in zip(rows[::2], rows[1::2]):
        sparse["time_ratio"] = sparse["median_ms"] / dense["median_ms"]
        sparse["mem_ratio"] = sparse["peak_mb"] / max(dense["peak_mb"], 1e-9)
    return rows


TARGETS = [("64x64", "mem_ratio", 0.10), ("64x64", "time_ratio", 0.25), ("14x14", "time_ratio", 1.5)]


def format_scaling(rows, device):
    out = [f"token_graph + {LAYERS} x (select + graph propagation), B={BATCH}, C={CHANNELS}, mixed graph "
           f"M={NEIGHBOURS}, P=n/64, token sizes on; device={device}, torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads", "",
           f"{'grid':>6} {'n':>5} {'backend':>7} {'median ms':>10} {'min-max ms':>17} {'peak MB':>9} "
           f"{'time s/d':>9} {'mem s/d':>8}"]
    for r in rows:
        ratios = (f"{r['time_ratio']:>9.3f} {r['mem_ratio']:>8.4f}" if "time_ratio" in r else "")
        out.append(f"{r['grid']:>6} {r['n']:>5} {r['backend']:>7} {r['median_ms']:>10.2f} "
                   f"{r['min_ms']:>8.2f}-{r['max_ms']:<8.2f} {r['peak_mb']:>9.2f} {ratios}")
    out.append("")
    by = {(r["grid"], r["backend"]): r for r in rows}
    for grid, key, limit in TARGETS:
        if (grid, "sparse") in by:
            v = by[(grid, "sparse")][key]
            out.append(f"target {grid} {key} <= {limit}: {v:.4f} {'met' if v <= limit else 'MISSED'}")
    return "\n".join(out) + "\n"


# ---- throughput --------------------------------------------------------------------------------
# P (= ToMe's r) per model, from supplement Tables 1-3; GTP's paper settings (C.2, C.3).
SCHEDULES = {"deit_small": [8, 11, 14, 16], "deit_base": [4, 8, 11, 14, 16],
             "vit_large": list(range(1, 9)), "eva_large": list(range(1, 9)),
             "smoke": [1, 2]}
SPARSITY = {"deit_base": 0.5}  # theta: 0.6 for DeiT-S (C.2) and the others, 0.5 for DeiT-B
METHODS = ("baseline_fused", "baseline_explicit", "gtp_dense", "gtp_sparse", "gtp_fast", "tome")
# Also timed on CUDA: the same model replayed from a CUDA graph (gtp_ref.fast.cuda_graphed).
GRAPHED = ("baseline_fused+graph", "gtp_fast+graph", "tome+graph")
# Only when named in --methods: torch.compile(model); on CUDA also replayed from a CUDA graph.
COMPILED = ("baseline_fused+compile", "gtp_dense+compile", "gtp_fast+compile", "tome+compile")


def geometry_of(model):
    """The preset's ViTGeometry, or a tiny one for the CPU smoke run."""
    from complexity.backbone import PRESETS, ViTGeometry
    if model == "smoke":
        return ViTGeometry("smoke", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    return PRESETS[model]


def build_model(model, method, P, device):
    """A randomly initialised model of the preset geometry running ``method`` at P (or r)."""
    from gtp_ref.model import GTPViT
    from gtp_ref.presets import vit_kwargs
    from gtp_ref.tome import ToMeViT
    from gtp_ref.vit import ViT

    geometry = vit_kwargs(geometry_of(model))
    method = method.split("+")[0]
    with torch.device(device):  # initialised where it runs: large models build in seconds, not minutes
        if method.startswith("baseline"):
            net = ViT(**geometry, fused_attn=method == "baseline_fused")
        elif method == "tome":
            net = ToMeViT(**geometry, r=P, fused_attn=True)
        else:
            net = GTPViT(**geometry, num_prop=P, graph="mixed", num_neighbours=4, selection="mixed_attn_max",
                         propagation="graph", sparsity=SPARSITY.get(model, 0.6), alpha=0.1, token_scale=True,
                         backend=method.split("_")[1])
    return net.eval()


def ideal_speedup(model, P):
    """Backbone MACs without reduction / with P removed per layer (complexity.backbone)."""
    from complexity.backbone import backbone_macs, gtp_schedule
    g = geometry_of(model)
    return backbone_macs(g)["total"] / backbone_macs(g, gtp_schedule(g, P))["total"]


def forward_fn(net, device, dtype):
    """x -> net(x) without gradients, under autocast for fp16 / bf16."""
    amp = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]

    def forward(x):
        with torch.no_grad(), torch.autocast(device, dtype=amp, enabled=amp is not None):
            return net(x)
    return forward


def throughput(models, device="cpu", batches=(1,), dtypes=("fp32",), repeats=5, methods=METHODS,
               progress=None):
    """Images per second for every model x method x P x batch x dtype; baselines at P = 0.

    A method ending in ``+graph`` is replayed from a CUDA graph (captured after warm-up); one
    ending in ``+compile`` runs ``torch.compile(model)``, on CUDA replayed from a CUDA graph too.
    """
    from gtp_ref.fast import cuda_graphed
    rows = []
    for model in models:
        for batch in batches:
            for dtype in dtypes:
                g = geometry_of(model)
                x = torch.randn(batch, g.in_chans, g.img_size, g.img_size, device=device)
                for method in methods:
                    for P in ([0] if method.startswith("baseline") else SCHEDULES[model]):
                        if progress:
                            progress(f"{model} {method} P={P} batch={batch} {dtype}")
                        net = build_model(model, method, P, device)
                        if method.endswith("+compile"):
                            # a fresh compile cache per model: otherwise the models of one run pile up
                            # recompilations of the same forward until Dynamo's limit quietly runs eager
                            torch.compiler.reset()
                            net = torch.compile(net)  # compiled by the first call (cuda_graphed's or time_it's warm-up)
                        forward = forward_fn(net, device, dtype)
                        if method.endswith("+graph") or (method.endswith("+compile") and device == "cuda"):
                            forward = cuda_graphed(forward, x)
                        times = time_it(lambda: forward(x), device, repeats)
                        med = statistics.median(times)
                        rows.append({"model": model, "method": method, "P": P, "batch": batch,
                                     "dtype": dtype, "img_per_s": batch / med,
                                     "min_img_per_s": batch / max(times), "max_img_per_s": batch / min(times),
                                     "ideal_speedup": ideal_speedup(model, P) if P else 1.0})
                        del forward, net
    return rows


def format_throughput(rows, device):
    out = [f"throughput (img/s, median of repeats; min-max), device={device}, torch {torch.__version__}", "",
           f"{'model':>10} {'method':>22} {'P':>3} {'batch':>5} {'dtype':>5} {'img/s':>10} "
           f"{'min-max':>21} {'vs fused':>8} {'ideal':>6}"]
    base = {(r["model"], r["batch"], r["dtype"]): r["img_per_s"] for r in rows if r["method"] == "baseline_fused"}
    for r in rows:
        b = base.get((r["model"], r["batch"], r["dtype"]))
        rel = f"{r['img_per_s'] / b:8.3f}" if b else f"{'':>8}"
        out.append(f"{r['model']:>10} {r['method']:>22} {r['P']:>3} {r['batch']:>5} {r['dtype']:>5} "
                   f"{r['img_per_s']:>10.2f} {r['min_img_per_s']:>10.2f}-{r['max_img_per_s']:<10.2f} {rel} "
                   f"{r['ideal_speedup']:6.2f}")
    return "\n".join(out) + "\n"


# Measured with the authors' code on an H100 (torch 2.11, fp16 autocast, batch 256), as quoted in
# issue 5; drawn as crosses beside our measurements, never mixed into them.
QUOTED = {("deit_small", 256, "fp16"): {"authors' GTP": {8: 6086, 16: 8816},
                                        "official ToMe": {8: 10084, 16: 14177}}}


COLORS = {"gtp_dense": "tab:blue", "gtp_sparse": "tab:orange", "gtp_fast": "tab:green", "tome": "tab:red"}
STYLES = {"": ("-", "o-"), "graph": ("--", "o--"), "compile": ("-.", "s-.")}  # suffix -> baseline line, P curve


def _style(method):
    """(baseline line style, P-curve format) of a method, by its +suffix; explicit attention dotted."""
    if method == "baseline_explicit":
        return ":", "o:"
    return STYLES[method.partition("+")[2]]


def plot_throughput(rows, path):
    """Throughput vs P per method, one panel per (model, batch, dtype); dashed: ideal speedup."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {m: i for i, m in enumerate(SCHEDULES)}
    panels = sorted({(r["model"], r["batch"], r["dtype"]) for r in rows},
                    key=lambda p: (order.get(p[0], len(order)), p[0], p[2], p[1]))
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(8.5, 5.5 * cols), 4.5 * nrows), squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (model, batch, dtype) in zip(axes.flat, panels):
        sel = [r for r in rows if (r["model"], r["batch"], r["dtype"]) == (model, batch, dtype)]
        Ps = sorted({r["P"] for r in sel if r["P"]})
        fused = next((r["img_per_s"] for r in sel if r["method"] == "baseline_fused"), None)
        for method in METHODS + GRAPHED + COMPILED:
            pts = sorted((r["P"], r["img_per_s"]) for r in sel if r["method"] == method)
            if not pts:
                continue
            line, curve = _style(method)
            if method.startswith("baseline"):
                ax.axhline(pts[0][1], ls=line, color="gray", label=method.replace("_", " "))
            else:
                ax.plot(*zip(*pts), curve, color=COLORS[method.split("+")[0]], label=method.replace("_", " "))
        if fused and Ps:
            ax.plot(Ps, [fused * ideal_speedup(model, P) for P in Ps], "k--", lw=1,
                    label="ideal: fused baseline x MAC ratio")
        for (name, pts), marker in zip(QUOTED.get((model, batch, dtype), {}).items(), "xP"):
            ax.plot(list(pts), list(pts.values()), marker, color="black", ms=9, ls="none",
                    label=f"{name} (quoted in issue 5, not ours)")
        ax.set(xlabel="P (= r) tokens removed per layer", ylabel="images / s",
               title=f"{model}, batch {batch}, {dtype}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return [path]


def main(argv=None):
    p = OneLineParser(prog="python -m gtp_ref.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("throughput", help="img/s of baseline, GTP and ToMe at the paper's P / r")
    tp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    tp.add_argument("--models", nargs="+", default=None, choices=list(SCHEDULES),
                    help="default: all four paper backbones on CUDA, 'smoke' on the CPU")
    tp.add_argument("--batches", type=int, nargs="+", default=None,
                    help="default on CUDA: 1 and 256 (64 for vit_large / eva_large); CPU: 2")
    tp.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "fp16", "bf16"],
                    help="default: fp32 and fp16 on CUDA, fp32 on the CPU")
    tp.add_argument("--methods", nargs="+", default=None, choices=list(METHODS + GRAPHED + COMPILED),
                    help="default: all but +compile (the +graph ones on CUDA only)")
    tp.add_argument("--repeats", type=int, default=5)
    tp.add_argument("--json", action="store_true")
    tp.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON rows to PATH")
    tp.add_argument("--figure", default=None, help="write the throughput figure to this PNG path")
    th = sub.add_parser("threshold", help="the sparsity threshold: kthvalue vs topk vs radix selection")
    th.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    th.add_argument("--sizes", nargs="+", default=None, metavar="BxN",
                    help="batch x tokens, H = 6 heads (default on CUDA: 16x197 256x197 1x4097; CPU: 2x50)")
    th.add_argument("--repeats", type=int, default=20)
    th.add_argument("--json", action="store_true")
    th.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON rows to PATH")
    at = sub.add_parser("attention", help="the attention map: torch vs the fused path vs a one-kernel candidate")
    at.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    at.add_argument("--sizes", nargs="+", default=None, metavar="BxN",
                    help="batch x tokens, H = 6, d = 64 (default on CUDA: 16x197 256x197 64x257; CPU: 2x50)")
    at.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="q and k (default: fp16 on CUDA, fp32 on the CPU)")
    at.add_argument("--repeats", type=int, default=20)
    at.add_argument("--json", action="store_true")
    at.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON rows to PATH")
    pr = sub.add_parser("profile", help="torch.profiler table of one forward configuration")
    pr.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pr.add_argument("--model", default="smoke", choices=list(SCHEDULES))
    pr.add_argument("--method", default="gtp_fast", choices=list(METHODS))
    pr.add_argument("--P", type=int, default=None, help="default: the schedule's first")
    pr.add_argument("--batch", type=int, default=2)
    pr.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    pr.add_argument("--rows", type=int, default=25)
    pl = sub.add_parser("plot", help="redraw the throughput figure from saved --json-out files")
    pl.add_argument("json", nargs="+", help="JSON files written by 'throughput --json-out'")
    pl.add_argument("--figure", required=True, help="PNG path to write")
    s = sub.add_parser("scaling", help="dense vs sparse: token graph + 12 propagation layers")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--grids", type=int, nargs="+", default=list(GRIDS), help="grid sides (default 14 32 64)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON rows to PATH")
    args = p.parse_args(argv)
    if args.command == "plot":
        return _plot_main(p, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.command == "throughput":
        return _throughput_main(p, args)
    if args.command == "threshold":
        return _threshold_main(p, args)
    if args.command == "attention":
        return _attention_main(p, args)
    if args.command == "profile":
        return _profile_main(p, args)
    if args.repeats < 1 or any(g < 1 for g in args.grids):
        p.error("--repeats and --grids must be >= 1")
    rows = scaling(args.device, args.repeats, tuple(args.grids), progress=_progress)
    return _emit(args, rows, format_scaling)


def _progress(message):
    print(message, file=sys.stderr, flush=True)


def _emit(args, rows, formatter):
    """The rows as JSON (--json) or as the command's table; --json-out PATH also writes the JSON."""
    doc = json.dumps({"device": args.device, "torch": torch.__version__, "rows": rows}, indent=2)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(doc + "\n")
    print(doc if args.json else formatter(rows, args.device), end="\n" if args.json else "")
    return 0


def _throughput_main(p, args):
    cuda = args.device == "cuda"
    models = args.models or (["deit_small", "deit_base", "vit_large", "eva_large"] if cuda else ["smoke"])
    dtypes = args.dtypes or (["fp32", "fp16"] if cuda else ["fp32"])
    if args.repeats < 5 and models != ["smoke"]:
        p.error("--repeats must be >= 5 for a measurement (the smoke model accepts fewer)")
    if args.repeats < 1 or (args.batches and min(args.batches) < 1):
        p.error("--repeats and --batches must be >= 1")
    methods = args.methods or (METHODS + GRAPHED if cuda else METHODS)
    if not cuda and any(m.endswith("+graph") for m in methods):
        p.error("--methods: the +graph methods need --device cuda")
    rows = []
    for model in models:
        batches = args.batches or ([1, 64 if model in ("vit_large", "eva_large") else 256] if cuda else [2])
        rows += throughput([model], args.device, batches, dtypes, args.repeats, methods, progress=_progress)
    if args.figure:
        plot_throughput(rows, args.figure)
    return _emit(args, rows, format_throughput)


def _plot_main(p, args):
    rows = []
    for path in args.json:
        try:
            with open(path) as f:
                rows += json.load(f)["rows"]
        except (OSError, ValueError, KeyError) as e:
            p.error(f"cannot read throughput rows from {path}: {e}")
    write_files(p, args.figure, lambda: plot_throughput(rows, args.figure))
    return 0


# ---- the sparsity threshold and profiles ------------------------------------------------------
def threshold_methods(device):
    """name -> f(rows [R, L], k) giving the k-th smallest per row; all must agree exactly."""
    from gtp_ref.fast import kth_smallest
    methods = {"kthvalue": lambda x, k: x.kthvalue(k, dim=-1).values,
               "topk": lambda x, k: x.topk(k, dim=-1, largest=False, sorted=False).values.amax(-1),
               "topk (fast)": kth_smallest}  # the cheaper of topk's two directions
    if device == "cuda":
        from gtp_ref import _triton
        methods["triton radix"] = _triton.kth_smallest_radix
        methods["triton sample 4096"] = _triton.kth_smallest
        methods["triton sample 1024"] = lambda x, k: _triton.kth_smallest(x, k, sample=1024, spread=72, num_warps=4)
        methods["triton bracket"] = _triton.kth_smallest_bracket  # many programs per row
    return methods


def time_op_us(fn, device, repeats):
    """Median and min of ``repeats`` timed calls, in microseconds (CUDA events on the GPU)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(1e3 * start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e6 * (time.perf_counter() - t0))
    return statistics.median(times), min(times)


def threshold(sizes, device, repeats, heads=6, theta=0.6):
    """Time every threshold method on softmax maps [B, H, N, N] (k = int(N^2 (1 - theta)))."""
    from gtp_ref.select import sparsity_k
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for B, N in sizes:
        attn = torch.randn(B * heads, N, N, generator=g, device=device).softmax(-1).view(B * heads, N * N)
        k = sparsity_k(N, theta)
        want = attn.kthvalue(k, dim=-1).values
        rows += _time_candidates(threshold_methods(device), lambda f: f(attn, k),
                                 lambda name, out: {"exact": bool(torch.equal(out, want))},
                                 {"B": B, "N": N, "H": heads, "k": k}, device, repeats)
    return rows


def _time_candidates(methods, call, check, row, device, repeats):
    """One row per method: ``row``, the method's name, the median and min of its timed calls
    (``call(f)``) in us and ``check(name, result)``'s fields -- or the error a failing
    candidate raised (reported in its row, not fatal to the run)."""
    rows = []
    for name, f in methods.items():
        try:
            med, best = time_op_us(lambda: call(f), device, repeats)
            fields = check(name, call(f))
        except Exception as e:  # noqa: BLE001 -- a candidate that fails is reported, not fatal
            rows.append({**row, "method": name, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        rows.append({**row, "method": name, "median_us": med, "min_us": best, **fields})
    return rows


def _candidate_table(title, rows, label, method_width, baseline, last):
    """The rows of ``_time_candidates`` as a table: B, N, the ``label`` = (header, key, width)
    column, method, median and min us, the time relative to the ``baseline`` method's, and the
    ``last`` = (header, width, format(row)) column; a failed candidate's row shows its error."""
    (lh, lk, lw), (xh, xw, xf) = label, last
    ratio = f"vs {baseline}"
    rw = max(9, len(ratio))
    out = [title, "", f"{'B':>4} {'N':>5} {lh:>{lw}} {'method':>{method_width}} {'median us':>11} "
                      f"{'min us':>10} {ratio:>{rw}} {xh:>{xw}}"]
    base = {(r["B"], r["N"]): r["median_us"] for r in rows if r["method"] == baseline}
    for r in rows:
        head = f"{r['B']:>4} {r['N']:>5} {r[lk]:>{lw}} {r['method']:>{method_width}}"
        if "error" in r:
            out.append(f"{head} failed: {r['error']}")
            continue
        out.append(f"{head} {r['median_us']:>11.1f} {r['min_us']:>10.1f} "
                   f"{r['median_us'] / base[(r['B'], r['N'])]:>{rw}.3f} {xf(r):>{xw}}")
    return "\n".join(out) + "\n"


def format_threshold(rows, device):
    return _candidate_table(f"k-th smallest of each head's N^2 attention entries (theta = 0.6), device={device}, "
                            f"torch {torch.__version__}", rows, ("H", "H", 2), 18, "kthvalue",
                            ("exact", 0, lambda r: str(r["exact"])))


def attention_map_methods(device):
    """name -> f(q, k, scale, log_s): the float32 map softmax(q k^T scale + log s), or (GEMM-only
    rows, whose name starts with "q kT") just the logits."""
    def reference(q, k, scale, log_s):
        return ((q @ k.transpose(-2, -1)) * scale + log_s[:, None, None, :]).softmax(-1, dtype=torch.float32)

    def padded_logits(q, k, scale, log_s):  # keys padded to a multiple of 8: 16-byte aligned fp16 rows
        pad = -k.shape[2] % 8
        return q @ torch.nn.functional.pad(k, (0, 0, 0, pad)).transpose(-2, -1)

    methods = {"torch": reference,
               "q kT (torch)": lambda q, k, scale, log_s: q @ k.transpose(-2, -1),
               "q kT, keys padded to 8": padded_logits}
    if device == "cuda":
        from gtp_ref import _triton
        methods["q kT + triton softmax"] = (  # the fast backend's path now
            lambda q, k, scale, log_s: _triton.softmax_rows(q @ k.transpose(-2, -1), scale, log_s))
        methods["triton q kT+softmax"] = _triton.attention_probs  # one kernel (candidate)
    return methods


def attention_map(sizes, device, repeats, dtype, heads=6, head_dim=64):
    """Time the attention-map stage of a GTP block (logits and row softmax, float32 out) on
    q, k [B, H, N, d] viewed from a qkv projection [B, N, 3, H, d], as the model has them."""
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for B, N in sizes:
        qkv = torch.randn(B, N, 3, heads, head_dim, generator=g, device=device).to(dtype)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) views
        log_s = torch.rand(B, N, generator=g, device=device).add(0.5).log()  # (B, N) float32
        scale = head_dim ** -0.5
        methods = attention_map_methods(device)
        want = methods["torch"](q, k, scale, log_s)

        def check(name, out):  # the logits-only rows have no map to compare
            return {"max_abs_diff": None if name.startswith("q kT") else float((out - want).abs().max())}
        rows += _time_candidates(methods, lambda f: f(q, k, scale, log_s), check,
                                 {"B": B, "N": N, "H": heads, "dtype": str(dtype).removeprefix("torch.")},
                                 device, repeats)
    return rows


def format_attention_map(rows, device):
    def diff(r):
        return "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
    return _candidate_table(f"attention map softmax(q kT / sqrt(d) + log s), float32 out, H = 6, d = 64, "
                            f"device={device}, torch {torch.__version__}; diff: max |p - torch's p|",
                            rows, ("dtype", "dtype", 8), 24, "torch", ("diff", 9, diff))


def _sizes(p, args, default):
    """--sizes BxN ... as (B, N) pairs (exit 2 on a malformed one); checks --repeats too."""
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes or default]
    except ValueError:
        sizes = [()]
    if args.repeats < 1 or any(len(s) != 2 or min(s) < 1 for s in sizes):
        p.error("--sizes are BxN with B, N >= 1 (e.g. 256x197); --repeats must be >= 1")
    return sizes


def _threshold_main(p, args):
    sizes = _sizes(p, args, ["16x197", "256x197", "1x4097"] if args.device == "cuda" else ["2x50"])
    return _emit(args, threshold(sizes, args.device, args.repeats), format_threshold)


def _attention_main(p, args):
    cuda = args.device == "cuda"
    sizes = _sizes(p, args, ["16x197", "256x197", "64x257"] if cuda else ["2x50"])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype or ("fp16" if cuda else "fp32")]
    return _emit(args, attention_map(sizes, args.device, args.repeats, dtype), format_attention_map)


def _profile_main(p, args):
    from torch.profiler import ProfilerActivity, profile
    P = SCHEDULES[args.model][0] if args.P is None else args.P
    if args.batch < 1 or P < 0:
        p.error("--batch must be >= 1 and --P >= 0")
    g = geometry_of(args.model)
    x = torch.randn(args.batch, g.in_chans, g.img_size, g.img_size, device=args.device)
    forward = forward_fn(build_model(args.model, args.method, P, args.device), args.device, args.dtype)
    time_it(lambda: forward(x), args.device, repeats=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            forward(x)
        _sync(args.device)
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    print(f"{args.model} {args.method} P={P} batch={args.batch} {args.dtype}, 3 forwards, device={args.device}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
