"""``python -m gtp_ref.conformance export DIR``: write the language-neutral JSON vectors.
``python -m gtp_ref.conformance vectors``: how close each backend and ToMe come to the vectors
computed with the authors' GTP and the official ToMe (float64)."""

import sys
from collections.abc import Sequence

from gtp_ref.cli import OneLineParser, output_dir, write_files
from gtp_ref.conformance.export import export, paths


def vectors_report() -> str:
    """The largest absolute and relative differences of the logits from the authors' GTP vectors
    (each backend) and the official ToMe vectors, in float64, with the tolerance the tests ask."""
    import torch

    from gtp_ref.backends import NAMES
    from gtp_ref.conformance.seeded import model_for, official_vectors, tome_model_for, tome_vectors

    lines = [
        f"logits against the reference vectors, float64, torch {torch.__version__} "
        "(tests: rtol 1e-6, atol 1e-8)",
        f"{'vectors':>28} {'model':>10} {'max |diff|':>11} {'max rel':>9}",
    ]

    def row(name, label, pairs):
        diffs = [(got - torch.tensor(want, dtype=torch.float64)).abs() for got, want in pairs]
        rel = max(
            float((d / torch.tensor(w, dtype=torch.float64).abs().clamp_min(1e-300)).max())
            for d, (_, w) in zip(diffs, pairs)
        )
        lines.append(f"{name:>28} {label:>10} {max(float(d.max()) for d in diffs):>11.1e} {rel:>9.1e}")

    with torch.no_grad():
        for backend in NAMES:
            pairs = []
            for v in official_vectors():
                model, images = model_for(v, backend=backend)
                pairs.append((model(images), v["logits"]))
            row(f"authors' GTP ({len(pairs)})", backend, pairs)
        pairs = []
        for v in tome_vectors():
            model, images = tome_model_for(v)
            pairs.append((model(images), v["logits"]))
        row(f"official ToMe ({len(pairs)})", "ToMeViT", pairs)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m gtp_ref.conformance",
        description="GTP conformance vectors (run the suite with: GTP_IMPL=module "
        "python -m pytest --pyargs gtp_ref.conformance)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write JSON vectors (one file per op, and model.json) into DIR")
    e.add_argument("dir")
    sub.add_parser(
        "vectors", help="how close gtp_ref comes to the authors' GTP and the official ToMe vectors"
    )
    args = p.parse_args(argv)
    if args.command == "vectors":
        sys.stdout.write(vectors_report())
        return 0
    out = output_dir(p, "DIR", args.dir)
    return write_files(p, repr(args.dir), paths(out), lambda: export(out))


if __name__ == "__main__":
    sys.exit(main())
