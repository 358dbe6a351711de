"""Result commands: ``report``, ``diff``, ``runs``."""

from __future__ import annotations

import sys
import textwrap

from neuronscan.cli._common import FORMATTER, examples
from neuronscan.errors import NeuronscanError


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("report", help="write the HTML report of a run", formatter_class=FORMATTER,
                       description="Write RUN/report/index.html: overview, unit cards, concepts, diff.",
                       epilog=examples("neuronscan report runs/shapesnet/demo",
                                        "neuronscan report runs/shapesnet/today --diff runs/shapesnet/yesterday"))
    p.add_argument("run")
    p.add_argument("--diff", metavar="OTHER_RUN", help="include a diff against this earlier run")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/report)")
    p.add_argument("--max-top-images", type=int, default=8, metavar="N", help="top images per unit card")
    p.add_argument("--thumb-size", type=int, default=64, metavar="PX", help="thumbnail side in pixels")

    p = sub.add_parser("diff", help="compare two runs; exit 1 when a diff threshold is crossed",
                       formatter_class=FORMATTER,
                       description=textwrap.dedent("""\
                           Compare run B (new) with run A (baseline). Same architecture: per unit label changes,
                           AUC deltas, gained/lost aligned concepts, new alignment to spurious concepts. Any two
                           models: concept coverage, and unit matching by activation correlation (--match).
                           Writes diff_units.parquet, diff_concepts.parquet and diff.json; exits 1 when a threshold
                           of the config's diff section is crossed (the nightly alert), 0 otherwise."""),
                       epilog=examples("neuronscan diff runs/resnet50/20260101T020000Z-ab12cd "
                                       "runs/resnet50/20260102T020000Z-ef34ab",
                                        "neuronscan diff --latest s3://audits/runs/resnet50",
                                        "neuronscan diff RUN_A RUN_B --match layer4:mean layer4:mean"))
    p.add_argument("runs", nargs="*", metavar="RUN", help="RUN_A RUN_B")
    p.add_argument("--latest", metavar="MODEL_DIR",
                   help="compare the newest complete run under MODEL_DIR with the one before")
    p.add_argument("--out", metavar="DIR", help="where the diff tables go (default: RUN_B/diff)")
    p.add_argument("--config", metavar="YAML", help="take diff thresholds and spurious concepts from this config")
    p.add_argument("--spurious", nargs="+", metavar="CONCEPT", help="concepts no unit should align with")
    p.add_argument("--min-abs-delta-auc", type=float, metavar="X")
    p.add_argument("--alpha", type=float, metavar="A", help="q-value threshold (default: run B's)")
    p.add_argument("--match", nargs=2, metavar=("LAYER_A", "LAYER_B"), help="match units between two layers")
    p.add_argument("--max-rows", type=int, default=20, metavar="N")

    p = sub.add_parser("runs", help="list the runs in a registry root", formatter_class=FORMATTER,
                       description="List ROOT/<model>/<run_id>/ runs (local or s3://) from their run.json.",
                       epilog=examples("neuronscan runs runs", "neuronscan runs s3://audits/runs"))
    p.add_argument("root")

    return {"report": _cmd_report, "diff": _cmd_diff, "runs": _cmd_runs}


def _cmd_report(args) -> int:
    import tempfile

    from neuronscan.report import write_report

    diff_dir = None
    if args.diff:
        from neuronscan.diff import diff_runs, write_diff

        diff_dir = tempfile.mkdtemp(prefix="neuronscan-diff-")
        write_diff(diff_runs(args.diff, args.run), diff_dir)
    path = write_report(args.run, args.out, diff_dir=diff_dir, max_top_images=args.max_top_images,
                        thumb_size=args.thumb_size)
    print(f"report: {path}")
    return 0


def _cmd_diff(args) -> int:
    from neuronscan.config import load_config
    from neuronscan.diff import diff_config_of, diff_runs, format_summary, thresholds_exceeded, write_diff
    from neuronscan.io import RunDir
    from neuronscan.registry import latest_run

    if args.latest:
        if args.runs:
            raise NeuronscanError("give either RUN_A RUN_B or --latest MODEL_DIR, not both")
        run_b = latest_run(args.latest)
        if run_b is None:
            raise NeuronscanError(f"no complete run under {args.latest!r}")
        run_a = latest_run(args.latest, before=run_b)
        if run_a is None:
            print(f"only one complete run under {args.latest}: nothing to compare")
            return 0
    elif len(args.runs) == 2:
        run_a, run_b = args.runs
    else:
        raise NeuronscanError("diff needs two runs (RUN_A RUN_B) or --latest MODEL_DIR")
    if args.config:
        cfg = load_config(args.config)
        diff_cfg, spurious = cfg.diff, cfg.score.spurious_concepts
    else:
        diff_cfg, spurious = diff_config_of(run_b)
    if args.spurious:
        spurious = args.spurious
    if args.min_abs_delta_auc is not None:
        diff_cfg = diff_cfg.model_copy(update={"min_abs_delta_auc": args.min_abs_delta_auc})
    result = diff_runs(run_a, run_b, spurious_concepts=spurious, min_abs_delta_auc=diff_cfg.min_abs_delta_auc,
                       alpha=args.alpha, match_layers=tuple(args.match) if args.match else None)
    out = args.out or RunDir(run_b).diff
    write_diff(result, out)
    print(format_summary(result, max_rows=args.max_rows))
    print(f"diff tables in {out}/")
    reasons = thresholds_exceeded(result, diff_cfg)
    for reason in reasons:
        print(f"ALERT: {reason}", file=sys.stderr)
    return 1 if reasons else 0


def _cmd_runs(args) -> int:
    from neuronscan.registry import list_runs

    runs = list_runs(args.root)
    if runs.empty:
        print(f"no runs under {args.root}")
        return 0
    print(runs.drop(columns=["run_dir"]).to_string(index=False))
    return 0
