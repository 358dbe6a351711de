"""Hierarchy command: ``hierarchy`` (collaborative units per concept and level, multimodal units per level)."""

from __future__ import annotations

import textwrap

from neuronscan.cli._common import FORMATTER, examples
from neuronscan.errors import NeuronscanError


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("hierarchy", help="collaborative units per concept and level; multimodal units per level",
                       formatter_class=FORMATTER,
                       description=textwrap.dedent("""\
                           On a scored run (no model pass: the probe's activations, labels and hierarchy, and the
                           score tables): for every concept with enough positives at every level of the hierarchy,
                           the smallest set of a layer's units whose joint linear probe reaches the target held-out
                           AUC (greedy forward selection) with each unit's Shapley share; and the units aligned
                           with two concepts that meet only near the root. Writes RUN/concept_units.parquet,
                           RUN/multimodal_units.parquet, RUN/hierarchy_units.parquet, RUN/hierarchy_summary.json,
                           and rewrites the run's report when it has one. Settings: the run config's hierarchy
                           section (--set hierarchy.KEY=VALUE)."""),
                       epilog=examples("neuronscan hierarchy runs/shapesnet/demo",
                                       "neuronscan hierarchy runs/shapesnet/demo --set hierarchy.max_units=4 "
                                       "--set hierarchy.multimodal_lca_depth=1"))
    p.add_argument("run", metavar="RUN_DIR", help="a scored run directory")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: RAY_ADDRESS, else local "
                   "(small runs need no Ray)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a setting of the run's config, e.g. --set hierarchy.target_auc=0.9")
    p.add_argument("--no-report", action="store_true", help="do not rewrite the run's HTML report")
    p.add_argument("--quiet", "-q", action="store_true")
    return {"hierarchy": _cmd_hierarchy}


def _cmd_hierarchy(args) -> int:
    from neuronscan.config import apply_overrides, config_from_dict, parse_overrides
    from neuronscan.io import RunDir, RunLock
    from pipelines import hierarchy as stage  # the stage module (pipelines/__init__.py does not name it yet)
    from pipelines import report_run

    run = RunDir(args.run)
    info = run.read_info()
    if not info or not isinstance(info.get("config"), dict):
        raise NeuronscanError(f"{run.info_uri} is missing or holds no config; is {args.run!r} a scored run?")
    cfg = config_from_dict(apply_overrides(info["config"], parse_overrides(args.overrides)), run.info_uri)
    report = None
    with RunLock(run.root, command=f"neuronscan hierarchy (run {run.run_id})"):
        summary = stage.hierarchy_run(cfg, run, quiet=args.quiet, address=args.address or cfg.ray.address)
        if not args.no_report and (run.exists(run.path("report", "index.html")) or info.get("report")):
            report = report_run(run)
    counts = summary.counts
    print(f"hierarchy: {counts['probes']:,} (layer, concept) probes over {counts['concepts_probed']:,} concepts, "
          f"{counts['probes_reached']:,} reached the target; {counts['multimodal_units']:,} units multimodal "
          f"(LCA depth ≤ {cfg.hierarchy.multimodal_lca_depth}) in {summary.seconds:.1f} s")
    print(f"  {'layer':<16} {'best aligned':>12} {'mean best depth':>15} {'multimodal':>10}")
    for layer, s in summary.layers.items():
        depth = s["mean_best_depth"]
        print(f"  {layer:<16} {s['units_best_aligned']:>12,} {depth if depth is not None else '—':>15} "
              f"{s['multimodal_units']:>10,}")
    for path in summary.files.values():
        print(f"  {path}")
    if report:
        print(f"\nreport: {report}")
    return 0
