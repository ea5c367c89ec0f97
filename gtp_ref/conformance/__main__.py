"""``python -m gtp_ref.conformance export DIR``: write the language-neutral JSON vectors."""
import argparse
import sys

from gtp_ref.conformance.export import export


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None):
    p = _OneLineParser(prog="python -m gtp_ref.conformance",
                       description="GTP conformance vectors (run the suite with: GTP_IMPL=module "
                                   "python -m pytest --pyargs gtp_ref.conformance)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write JSON vectors (one file per op, and model.json) into DIR")
    e.add_argument("dir")
    args = p.parse_args(argv)
    try:
        paths = export(args.dir)
    except OSError as err:
        p.error(f"cannot write into {args.dir!r}: {err}")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
