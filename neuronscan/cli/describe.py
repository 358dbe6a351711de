"""Describe command: ``describe`` (each unit described by CLIP embeddings of crops around its top images' argmax)."""

from __future__ import annotations

import math
import textwrap

from neuronscan.cli._common import FORMATTER, examples
from neuronscan.errors import NeuronscanError


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("describe", help="patch descriptions: CLIP on crops around each unit's top activations",
                       formatter_class=FORMATTER,
                       description=textwrap.dedent("""\
                           On a probed run: for each unit of the described layers, crop the receptive field around
                           the argmax location of each of its top describe.top_m images (measured exactly on the
                           model; a ViT's patch; widened to describe.min_crop of the image), embed the crops with
                           CLIP in one pass over the union of those images (each read once, on Ray actors), and
                           score every vocabulary word against them (describe.method: mean cosine, or soft-WPMI
                           over the crops). Writes RUN/describe/crops.parquet, RUN/descriptions.parquet and
                           RUN/describe/describe.json, rewrites the run's report when it has one, and prints per
                           layer a few units with both label-free labels: the whole-image CLIP label of the score
                           stage and the patch label. Settings: the run config's describe section (--set
                           describe.KEY=VALUE); the CLIP model defaults to probe.clip."""),
                       epilog=examples("neuronscan describe runs/shapesnet/demo_labelfree",
                                       "neuronscan describe runs/shapesnet/demo --set "
                                       "describe.model=neuronscan-tinyclip --set 'describe.layers=[conv4, head]' "
                                       "--set describe.top_m=8"))
    p.add_argument("run", metavar="RUN_DIR", help="a probed (and, for the whole-image labels, scored) run directory")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: RAY_ADDRESS, else a local Ray")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a setting of the run's config, e.g. --set describe.min_crop=0.3")
    p.add_argument("--units", type=int, default=3, metavar="N", help="units printed per layer (default 3)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite the run's HTML report")
    p.add_argument("--quiet", "-q", action="store_true")
    return {"describe": _cmd_describe}


def _cmd_describe(args) -> int:
    from neuronscan.config import apply_overrides, config_from_dict, parse_overrides
    from neuronscan.io import RunDir, RunLock
    from pipelines import describe as stage  # the stage module (pipelines/__init__.py does not name it yet)
    from pipelines import report_run

    run = RunDir(args.run)
    info = run.read_info()
    if not info or not isinstance(info.get("config"), dict):
        raise NeuronscanError(f"{run.info_uri} is missing or holds no config; is {args.run!r} a probed run?")
    cfg = config_from_dict(apply_overrides(info["config"], parse_overrides(args.overrides)), run.info_uri)
    report = None
    with RunLock(run.root, command=f"neuronscan describe (run {run.run_id})") as lock:
        summary = stage.describe_run(run, cfg, quiet=args.quiet, lock_token=lock.holder["token"],
                                     address=args.address or cfg.ray.address)
        if not args.no_report and (run.exists(run.path("report", "index.html")) or info.get("report")):
            report = report_run(run)
    c = summary.counts
    print(f"describe: {c['units_described']:,} of {c['units']:,} units described from {c['crops_embedded']:,} "
          f"crops ({c['distinct_crops']:,} distinct) of {c['images_decoded']:,} images, {c['vocabulary']:,} words, "
          f"{c['method']}, in {summary.seconds:.1f} s")
    table = stage.label_table(run, summary.descriptions, per_layer=max(0, args.units))
    if len(table):
        print(f"  {'layer':<16} {'unit':>5}  {'best concept':<16} {'AUC':>6}  {'CLIP (whole image)':<20} "
              f"{'patch (crops)':<20} {'score':>7}")
        for r in table.itertuples(index=False):
            auc = f"{r.best_auc:>6.3f}" if isinstance(r.best_auc, float) and math.isfinite(r.best_auc) else f"{'—':>6}"
            score = f"{r.patch_score:>7.3f}" if math.isfinite(r.patch_score) else f"{'—':>7}"
            print(f"  {r.layer:<16} {r.unit:>5}  {_text(r.best_concept):<16} {auc}  {_text(r.clip_label):<20} "
                  f"{_text(r.patch_label):<20} {score}")
    for path in summary.files.values():
        print(f"  {path}")
    if report:
        print(f"\nreport: {report}")
    return 0


def _text(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
