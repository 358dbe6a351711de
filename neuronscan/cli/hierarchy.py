"""Hierarchy command: ``hierarchy`` (collaborative units per concept and level, multimodal units per level, and
with ``--spatial`` HINT's spatial method: channel ranking and localisation IoU per concept and conv layer)."""

from __future__ import annotations

import textwrap

from neuronscan.cli._common import FORMATTER, examples
from neuronscan.errors import NeuronscanError


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("hierarchy", help="collaborative units per concept and level; multimodal units per level; "
                       "with --spatial, localisation of concepts (HINT)",
                       formatter_class=FORMATTER,
                       description=textwrap.dedent("""\
                           On a scored run (no model pass: the probe's activations, labels and hierarchy, and the
                           score tables): for every concept with enough positives at every level of the hierarchy,
                           the smallest set of a layer's units whose joint linear probe reaches the target held-out
                           AUC (greedy forward selection) with each unit's Shapley share; and the units aligned
                           with two concepts that meet only near the root. Writes RUN/concept_units.parquet,
                           RUN/multimodal_units.parquet, RUN/hierarchy_units.parquet, RUN/hierarchy_summary.json,
                           and rewrites the run's report when it has one. Settings: the run config's hierarchy
                           section (--set hierarchy.KEY=VALUE).

                           With --spatial (or hierarchy.spatial.enabled in the run's config), then HINT's spatial
                           method on the model itself: per concept and conv layer of hierarchy.spatial.layers, the
                           saliency-defined responsible regions, a position-level concept classifier, its Shapley
                           channel ranking and the IoU of its box with the ground-truth boxes on held-out images
                           (hierarchy.spatial.boxes; a shapes world's boxes.parquet by default). Writes
                           RUN/concept_spatial.parquet, RUN/localisation.parquet, RUN/spatial.json. Settings:
                           --set hierarchy.spatial.KEY=VALUE."""),
                       epilog=examples("neuronscan hierarchy runs/shapesnet/demo",
                                       "neuronscan hierarchy runs/shapesnet/demo --set hierarchy.max_units=4 "
                                       "--set hierarchy.multimodal_lca_depth=1",
                                       "neuronscan hierarchy runs/shapesnet/demo --spatial "
                                       "--set 'hierarchy.spatial.layers=[conv4]'"))
    p.add_argument("run", metavar="RUN_DIR", help="a scored run directory")
    p.add_argument("--spatial", action="store_true",
                   help="also run the spatial method (HINT) after the hierarchy stage, whatever "
                   "hierarchy.spatial.enabled says")
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
    from pipelines import hierarchy_run, report_run, run_spatial

    run = RunDir(args.run)
    info = run.read_info()
    if not info or not isinstance(info.get("config"), dict):
        raise NeuronscanError(f"{run.info_uri} is missing or holds no config; is {args.run!r} a scored run?")
    cfg = config_from_dict(apply_overrides(info["config"], parse_overrides(args.overrides)), run.info_uri)
    spatial = args.spatial or cfg.hierarchy.spatial.enabled
    address = args.address or cfg.ray.address
    report = spatial_summary = None
    with RunLock(run.root, command=f"neuronscan hierarchy (run {run.run_id})") as lock:
        summary = hierarchy_run(cfg, run, quiet=args.quiet, address=address)
        if spatial:
            spatial_summary = run_spatial(run, cfg, cfg.hierarchy.spatial, quiet=args.quiet,
                                          lock_token=lock.holder["token"], address=address)
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
    if spatial_summary is not None:
        _print_spatial(spatial_summary)
    if report:
        print(f"\nreport: {report}")
    return 0


def _print_spatial(s) -> None:
    """The spatial method's summary: tasks, cost, localisation per layer and level, files."""
    print(f"spatial: {s.n_tasks:,} (concept, layer) tasks over {s.n_concepts:,} concepts and "
          f"{len(s.layers)} layer(s), {s.n_skipped:,} skipped, in {s.seconds:.1f} s "
          f"({s.seconds_per_concept:.2f} s per task on the actors)")
    levels = s.by_level()
    if len(levels):
        print(f"  {'layer':<16} {'level':>5} {'concepts':>8} {'mean IoU':>8} {'IoU ≥ 0.5':>9}")
        for r in levels.itertuples(index=False):
            print(f"  {r.layer:<16} {int(r.depth):>5} {int(r.concepts):>8} {r.mean_iou:>8.3f} {r.frac_iou_50:>9.3f}")
    else:
        print("  no concept was localised (no ground-truth boxes: set hierarchy.spatial.boxes)")
    for path in s.files.values():
        print(f"  {path}")
