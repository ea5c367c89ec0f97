"""``python -m gtp_ref.apps.bench profile``: a ``torch.profiler`` table of one configuration's forward."""

import argparse
from typing import Any

import torch

from gtp_ref.apps import AUTOCAST
from gtp_ref.apps.bench import common, throughput
from gtp_ref.schedule import per_block, prop_schedule


def add_arguments(sub: Any) -> None:
    pr = sub.add_parser("profile", help="torch.profiler table of one forward configuration")
    pr.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pr.add_argument("--model", default="smoke", choices=list(throughput.SCHEDULES))
    pr.add_argument("--method", default="gtp_fast", choices=list(throughput.METHODS))
    pr.add_argument(
        "--num-prop",
        type=int,
        default=None,
        metavar="P",
        help="tokens removed per block (ToMe's r; default: the model's first of the supplement's)",
    )
    pr.add_argument("--batch", type=int, default=2)
    pr.add_argument("--dtype", default="fp32", choices=list(AUTOCAST))
    pr.add_argument("--rows", type=int, default=25, help="rows of the table (default 25)")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    common.positive(parser, "--batch", args.batch)
    common.positive(parser, "--rows", args.rows)
    g = throughput.geometry(args.model)
    args.num_prop = throughput.SCHEDULES[args.model][0] if args.num_prop is None else args.num_prop
    try:
        (
            per_block("r", args.num_prop, g.depth)
            if args.method == "tome"
            else prop_schedule(args.num_prop, g.depth, g.num_image_tokens)
        )
    except (TypeError, ValueError) as e:
        parser.error(f"--num-prop {args.num_prop} for {args.model}: {e}")


def run(args: argparse.Namespace) -> Any:
    from torch.profiler import ProfilerActivity, profile

    g = throughput.geometry(args.model)
    x = torch.randn(args.batch, g.patches.in_chans, *g.patches.img_size, device=args.device)
    forward = throughput.forward_fn(
        throughput.build_model(args.model, args.method, args.num_prop, args.device), args.device, args.dtype
    )
    forward(x)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            forward(x)
        if args.device == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    env = common.environment(args.device)
    print(
        f"{args.model} {args.method} P={args.num_prop} batch={args.batch} {args.dtype}, 3 forwards; "
        f"{common.header(env)}"
    )
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    return 0
