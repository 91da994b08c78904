"""`python -m server`: the same flags as `flowmap serve` (the supervisor in server.supervisor runs it)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None, prog: str = "python -m server") -> int:
    import argparse

    from server.cli import register

    parser = argparse.ArgumentParser(prog=prog)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
