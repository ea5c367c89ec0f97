"""``python -m complexity``: the C.4 cost report.  See ``--help``."""

import json
import sys
from collections.abc import Sequence

from complexity.report import BACKBONES, PAPER_M, Backbone, build_report, format_report, to_json
from gtp_ref.cli import OneLineParser


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m complexity",
        description="Extra MACs of ToMe vs GTP (supplement C.4, Eqs. 2-3), the erratum in Eq. 2, "
        "the paper's quoted values and the backbone MACs of supplement Tables 1-2. "
        "Giving any of --N --L --C --H --num-prop reports one custom backbone instead "
        "(unset values default to DeiT-S: N=197 L=12 C=384 H=6).",
    )
    p.add_argument("--N", type=int, help="tokens entering layer 1 ([CLS] included)")
    p.add_argument("--L", type=int, help="layers")
    p.add_argument(
        "--num-prop",
        type=int,
        default=PAPER_M,
        metavar="P",
        help="tokens removed per layer (the model's num_prop; C.4 calls it M); default 8",
    )
    p.add_argument("--C", type=int, help="feature dimension")
    p.add_argument("--H", type=int, help="attention heads")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)

    custom = any(v is not None for v in (args.N, args.L, args.C, args.H)) or args.num_prop != PAPER_M
    backbones = None
    if custom:
        d = BACKBONES[0]
        backbones = [
            Backbone(
                "custom",
                N=d.N if args.N is None else args.N,
                L=d.L if args.L is None else args.L,
                C=d.C if args.C is None else args.C,
                H=d.H if args.H is None else args.H,
            )
        ]
    try:
        report = build_report(backbones, M=args.num_prop)
    except ValueError as e:
        p.error(str(e))
    sys.stdout.write(json.dumps(to_json(report), indent=2) + "\n" if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
