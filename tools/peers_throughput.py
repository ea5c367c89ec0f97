"""Throughput of GTP and ToMe beside the authors' GTP-ViT and the official ToMe, on the CPU.

    python tools/peers_throughput.py --tome PATH/TO/facebookresearch/ToMe --gtp-vit PATH/TO/Ackesnal/GTP-ViT

The two checkouts are not part of this project; their code is imported from there, unmodified
(the authors' model moves its spatial graph to "cuda" when it is built: that one call is kept on
the CPU while it is built).  One timm DeiT-S with random weights is shared by every model: the
unreduced timm model (fused attention), ``gtp_ref.from_timm`` on the fast backend at the paper's
settings, ``gtp_ref.tome_from_timm``, the official ToMe (``tome.patch.timm``) and the authors'
GTP (``models_v3.graph_propagation_deit_small_patch16_224``, the same settings).  Each round
times every model once, in turn; the table gives the medians of the per-round ratios, which a
noisy machine moves less than the times themselves.  Needs timm (and so a torchvision that
matches torch).  The foreign code runs in a temporary working directory (``tools/peers.py``: the
authors' model writes a debug file into the current one).
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peers import foreign  # noqa: E402  (tools/peers.py, beside this file)


def authors_gtp(base: torch.nn.Module, P: int) -> torch.nn.Module:
    """The authors' GraphPropagationTransformer (DeiT-S) at the paper's settings, with base's weights
    (their checkout on sys.path)."""
    import models_v3

    to = torch.Tensor.to

    def on_cpu(self, *args, **kwargs):  # the constructor's graph.to("cuda"): kept where it is
        return self if args and args[0] == "cuda" else to(self, *args, **kwargs)

    torch.Tensor.to = on_cpu
    try:
        model = models_v3.graph_propagation_deit_small_patch16_224(
            selection="MixedAttnMax",
            propagation="GraphProp",
            num_prop=P,
            num_neighbours=4,
            sparsity=0.6,
            alpha=0.1,
            token_scale=True,
            graph_type="Mixed",
        )
    finally:
        torch.Tensor.to = to
    model.load_state_dict(base.state_dict())
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tome", required=True, help="a checkout of facebookresearch/ToMe")
    parser.add_argument("--gtp-vit", help="a checkout of Ackesnal/GTP-ViT (left out without it)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-prop", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    foreign(args.tome, *([args.gtp_vit] if args.gtp_vit else []))
    import timm
    import tome

    import gtp_ref
    from gtp_ref import from_timm, tome_from_timm

    torch.manual_seed(0)
    base = timm.create_model("deit_small_patch16_224", img_size=args.img_size).eval()
    settings = {**gtp_ref.paper_settings("deit_small").kwargs(), "backend": "fast"}
    print(
        f"device=cpu, torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d')}; DeiT-S {args.img_size} px, fp32, random weights, {args.rounds} rounds"
    )
    print(f"{'batch':>5} {'P':>3} {'model':>16} {'ms':>8} {'vs unreduced':>13} {'fast GTP vs it':>15}")
    for B in args.batches:
        x = torch.randn(B, 3, args.img_size, args.img_size)
        for P in args.num_prop:
            official = copy.deepcopy(base)
            tome.patch.timm(official)
            official.r = P
            models = {
                "unreduced": base,
                "gtp_ref GTP": from_timm(base, **{**settings, "num_prop": P}),
                "gtp_ref ToMe": tome_from_timm(base, r=P),
                "official ToMe": official,
            }
            if args.gtp_vit:
                models["authors' GTP"] = authors_gtp(base, P)
            times: dict[str, list[float]] = {name: [] for name in models}
            with torch.no_grad():
                for model in models.values():
                    model(x), model(x)
                for _ in range(args.rounds):
                    for name, model in models.items():
                        start = time.perf_counter()
                        model(x)
                        times[name].append(time.perf_counter() - start)
            for name in models:
                vs_base = statistics.median(b / t for b, t in zip(times["unreduced"], times[name]))
                ours = statistics.median(t / g for t, g in zip(times[name], times["gtp_ref GTP"]))
                print(
                    f"{B:>5} {P:>3} {name:>16} {statistics.median(times[name]) * 1e3:8.1f} {vs_base:13.2f} "
                    f"{ours:15.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
