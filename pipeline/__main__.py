"""`python -m pipeline COMMAND [options]`: one entry point for every stage and tool."""

from __future__ import annotations

import importlib
import sys

from pipeline.stages import COMMANDS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m pipeline COMMAND [--params params.yaml] [--set key=value ...]\n")
        print("commands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<11} {summary}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
