"""``python -m gtp_ref.apps.bench COMMAND``: see ``gtp_ref.apps.bench``."""

import sys
from collections.abc import Sequence

from gtp_ref.apps.bench import (
    attention,
    common,
    costmodel,
    plot,
    profile,
    resources,
    scaling,
    threshold,
    throughput,
)
from gtp_ref.cli import OneLineParser, output_path

COMMANDS = {
    "scaling": scaling,
    "throughput": throughput,
    "threshold": threshold,
    "attention": attention,
    "profile": profile,
    "plot": plot,
    "resources": resources,
    "costmodel": costmodel,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m gtp_ref.apps.bench",
        description="Benchmarks of gtp-ref (docs/performance.md has the results).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    checking = getattr(args, "check", False)  # the arguments only: a long run's command, before the run
    if hasattr(args, "device") and not checking:
        common.check_device(parser, args.device)
    if hasattr(args, "json_out"):
        output_path(parser, "--json-out", args.json_out, suffixes=[".json"])
    command.validate(parser, args)  # everything checked before anything is measured
    if checking:
        print(f"python -m gtp_ref.apps.bench {args.command}: the arguments are valid (nothing measured)")
        return 0
    args.parser = parser
    if args.command in ("profile", "plot", "costmodel"):
        return command.run(args)
    env = common.environment(args.device)
    rows = command.run(args)
    common.emit(parser, args, env, rows, command.table(rows, env))
    if getattr(args, "figure", None):
        label = plot.device_label(env)
        panels = {}
        throughput.add_speedups(rows)
        for r in rows:
            panels.setdefault((label, r["model"], r["batch"], r["dtype"]), []).append(r)
        try:
            plot.draw(panels, args.figure)
        except OSError as e:
            parser.exit(
                1,
                f"{parser.prog}: error: the figure was not drawn: cannot write --figure "
                f"{args.figure!r}: {e}\n",
            )
        print(f"wrote {args.figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
