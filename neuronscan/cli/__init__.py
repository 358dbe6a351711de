"""The ``neuronscan`` command line: one module per command group (audit, hierarchy, models, results, quality,
cluster).

Every subcommand has ``--help`` with an example. User mistakes (a config typo, an unknown layer, a
missing folder, an empty labels file) print one clear message and exit with status 2; a failed
``diff`` threshold exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from neuronscan import __version__
from neuronscan.cli import audit, cluster, describe, discover, explain, hierarchy, models, quality, results
from neuronscan.cli._common import FORMATTER, examples
from neuronscan.errors import NeuronscanError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (``HANDLERS`` maps each to its function)."""
    parser = argparse.ArgumentParser(
        prog="neuronscan",
        description="What every unit of a vision model responds to: probe a model on images, score every unit "
        "against every concept, and report.",
        formatter_class=FORMATTER,
        epilog=examples("neuronscan run configs/demo.yaml", "neuronscan layers resnet50",
                         "neuronscan score --activations acts/ --labels labels.parquet --out scored/"),
    )
    parser.add_argument("--version", action="version", version=f"neuronscan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for group in (audit, hierarchy, describe, discover, explain, models, results, quality, cluster):
        HANDLERS.update(group.add_parsers(sub))
    return parser


HANDLERS: dict = {}
"""Command name → handler, filled by `build_parser` from the command modules."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuronscan`` console script and ``python -m neuronscan``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from neuronscan.io import scrub

    try:
        return HANDLERS[args.command](args)
    except NeuronscanError as exc:
        print(f"error: {scrub(exc)}", file=sys.stderr)  # never a credential a message may quote
        return 2
    except ValueError as exc:
        # Input validation in the data layer raises ValueError with a user-facing message.
        print(f"error: {scrub(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with the same --run-id to resume", file=sys.stderr)
        return 130
