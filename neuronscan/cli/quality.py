"""Explanation-quality commands: ``sanity``."""

from __future__ import annotations

import sys

from neuronscan.cli._common import FORMATTER, examples


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser(
        "sanity", help="run the missing- and extra-labels sanity checks on every metric neuronscan reports",
        formatter_class=FORMATTER,
        description="NeuronEval's sanity checks of explanation metrics, on neuronscan's own kernels: a simulated "
        "unit fires on exactly one concept's images; a metric must score it lower when the explanation misses "
        "half the concept's images, and lower when it adds as many unrelated ones. Prints one pass/fail row per "
        "metric (recall and precision are controls that must fail one test each). Exit 0; 1 if a control does "
        "not fail its test (the check itself would then be broken).",
        epilog=examples("neuronscan sanity", "neuronscan sanity --top-quantile 0.005 --json sanity.json",
                        "neuronscan sanity --n-images 500000 --seeds 1000   # NeuronEval's own sizes"),
    )
    p.add_argument("--n-images", type=int, default=100_000, help="simulated images")
    p.add_argument("--frequencies", default="0.499,0.1,0.01,0.001,0.0001",
                   help="comma-separated activation frequencies γ of the simulated units")
    p.add_argument("--seeds", type=int, default=100, help="random missing/extra label sets per frequency")
    p.add_argument("--epsilon", type=float, default=0.001, help="a decrease must exceed this (normalised)")
    p.add_argument("--min-pass", type=float, default=0.9,
                   help="fraction of seeds that must decrease, at every frequency, to pass")
    p.add_argument("--top-quantile", type=float, default=None,
                   help="top set of F1/IoU/recall/precision: this fixed fraction (as score.top_quantile); "
                   "default: each unit's active images (NeuronEval's unbinarised setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the full result (per frequency) as JSON")
    return {"sanity": _cmd_sanity}


def _cmd_sanity(args) -> int:
    from neuronscan.errors import InputError
    from neuronscan.stats import sanity_checks

    try:
        freqs = tuple(float(f) for f in args.frequencies.split(",") if f.strip())
    except ValueError:
        raise InputError(f"--frequencies must be comma-separated numbers; got {args.frequencies!r}") from None
    result = sanity_checks(n_images=args.n_images, frequencies=freqs, n_seeds=args.seeds, epsilon=args.epsilon,
                           min_pass=args.min_pass, top_quantile=args.top_quantile, seed=args.seed)
    top = ("each unit's active images" if args.top_quantile is None else f"top {args.top_quantile:g} of images")
    print(f"sanity checks: {args.n_images:,} images, γ = {', '.join(f'{f:g}' for f in freqs)}, {args.seeds} seeds, "
          f"ε = {args.epsilon:g}, pass = a decrease in ≥ {100 * args.min_pass:g} % of seeds at every γ; "
          f"top set: {top}\n")
    print(result.table())
    if args.json:
        from neuronscan.io import write_json_atomic

        write_json_atomic(result.as_dict(), args.json)
        print(f"\n→ {args.json}")
    broken = result.passed["recall"]["missing"] or result.passed["precision"]["extra"]
    if broken:
        print("error: a control metric passed the test it must fail; the check is not measuring what it should",
              file=sys.stderr)
    return 1 if broken else 0

