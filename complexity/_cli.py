"""The project's command-line parsers: a usage error is one line on stderr and exit code 2."""
import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def write_files(parser, where, write):
    """Run ``write()`` (which returns the paths it wrote), report each path, exit 0; an OSError
    becomes the parser's one-line error naming ``where``."""
    try:
        paths = write()
    except OSError as e:
        parser.error(f"cannot write into {where}: {e}")
    for path in paths:
        print(f"wrote {path}")
    return 0
