"""``python -m gtp_ref.conformance export DIR``: write the language-neutral JSON vectors."""
import sys
from collections.abc import Sequence

from complexity._cli import OneLineParser, output_dir, write_files
from gtp_ref.conformance.export import export, paths


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m gtp_ref.conformance",
                      description="GTP conformance vectors (run the suite with: GTP_IMPL=module "
                                  "python -m pytest --pyargs gtp_ref.conformance)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write JSON vectors (one file per op, and model.json) into DIR")
    e.add_argument("dir")
    args = p.parse_args(argv)
    out = output_dir(p, "DIR", args.dir)
    return write_files(p, repr(args.dir), paths(out), lambda: export(out))


if __name__ == "__main__":
    sys.exit(main())
