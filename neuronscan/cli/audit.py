"""Audit commands: ``run``, ``probe``, ``score``, ``validate``."""

from __future__ import annotations

import textwrap

from neuronscan.cli._common import FORMATTER, add_config_args, examples, overrides, print_top
from neuronscan.errors import NeuronscanError


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("run", help="probe → score → report, one command", formatter_class=FORMATTER,
                       description="Run a whole audit: probe the images, score every unit, write the report.",
                       epilog=examples("neuronscan run configs/demo.yaml",
                                        "neuronscan run configs/demo.yaml --out /tmp/runs --set probe.batch_size=64",
                                        "neuronscan run configs/imagenet_resnet50.yaml --address ray://head:10001"))
    add_config_args(p)
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--restart", action="store_true",
                   help="delete the outputs of this run id and start it again (instead of resuming it)")

    p = sub.add_parser("probe", help="run the model over the images and write activations", formatter_class=FORMATTER,
                       description="Probe stage only: writes images.parquet, activations/, topk/ under the run dir.",
                       epilog=examples("neuronscan probe configs/demo.yaml --run-id try1"))
    add_config_args(p)
    p.add_argument("--restart", action="store_true",
                   help="delete the outputs of this run id and start it again (instead of resuming it)")

    p = sub.add_parser("score", help="score activations against concept labels", formatter_class=FORMATTER,
                       description=textwrap.dedent("""\
                           Score every unit against every concept. Either a probed run (--run), or activations
                           produced anywhere: --activations DIR with DIR/<layer>/part-*.parquet (image_id int64 +
                           u00000… float32 columns) and --labels labels.parquet with (image_id, concept) rows.
                           Writes OUT/neuron_concepts.parquet and OUT/neurons.parquet."""),
                       epilog=examples("neuronscan score --activations acts/ --labels labels.parquet --out scored/",
                                        "neuronscan score --run runs/shapesnet/demo --set score.alpha=0.01"))
    p.add_argument("--run", metavar="RUN_DIR", help="a probed run directory (scored in place)")
    p.add_argument("--activations", metavar="DIR", help="folder of <layer>/part-*.parquet")
    p.add_argument("--labels", metavar="PARQUET", help="labels.parquet: (image_id, concept) rows")
    p.add_argument("--hierarchy", metavar="FILE", help="optional (concept, parent) edges: Parquet or YAML")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the run dir)")
    p.add_argument("--config", metavar="YAML", help="take the score section from this run config")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address; default: RAY_ADDRESS, else local")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a score setting, e.g. --set score.n_perm=0")
    p.add_argument("--no-report", action="store_true", help="with --run: do not rewrite the run's HTML report")
    p.add_argument("--quiet", "-q", action="store_true")

    p = sub.add_parser("validate", help="check a config; list every problem at once", formatter_class=FORMATTER,
                       description="Validate a YAML run config (and its overrides) without running anything. "
                       "Sections: run, data, model, probe, score, diff, hierarchy (with hierarchy.spatial), ray.",
                       epilog=examples("neuronscan validate configs/demo.yaml",
                                        "neuronscan validate configs/demo.yaml --set probe.batch_size=0"))
    p.add_argument("config")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides")
    p.add_argument("--check-model", action="store_true", help="also build the model and resolve its layers")

    return {"run": _cmd_run, "probe": _cmd_probe, "score": _cmd_score, "validate": _cmd_validate}


def _cmd_run(args, stages=("probe", "score")) -> int:
    from neuronscan.config import load_config
    from neuronscan.io import RunDir
    from pipelines import run_audit

    cfg = load_config(args.config, overrides(args))
    result = run_audit(cfg, quiet=args.quiet, report=not getattr(args, "no_report", False), stages=stages,
                       restart=args.restart)
    run_dir = result["run_dir"]
    counts = result.get("counts", {})
    print(f"\nrun {result['run_id']}: {counts.get('ok', 0):,} images ok, {counts.get('failed', 0):,} failed "
          f"(of {counts.get('inputs', 0):,} inputs)")
    if "score" in stages:
        print(f"  {counts.get('significant_pairs', 0):,} of {counts.get('tests', 0):,} unit–concept pairs significant "
              f"at q ≤ {cfg.score.alpha}")
    run = RunDir(run_dir)
    print(f"outputs in {run.root}/")
    paths = [run.images, run.activations_dir + "/", run.path("topk") + "/"]
    if "score" in stages:
        paths += [run.neuron_concepts, run.neurons]
    for path in paths + [run.info_uri]:
        print(f"  {path}")
    print_top(result.get("_top_units"))
    if result.get("report"):
        print(f"\nreport: {result['report']}")
    return 0


def _cmd_score(args) -> int:
    import datetime as _dt
    import os
    import time

    from neuronscan.concepts import read_hierarchy, read_labels
    from neuronscan.config import apply_overrides, config_from_dict, load_config, parse_overrides
    from neuronscan.io import RunDir, RunLock, exists, join, write_json_atomic
    from pipelines import init_ray, report_run, run_score, score_run

    def since_process_start() -> float | None:
        """Seconds since this process started (interpreter start-up and imports included); None off Linux."""
        try:
            with open("/proc/self/stat") as fh:
                start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
            return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    t_cmd = time.perf_counter()
    startup_s = since_process_start()
    ov = parse_overrides(args.overrides)
    report = None
    if args.run:
        if args.activations or args.labels:
            raise NeuronscanError("give either --run, or --activations with --labels, not both")
        run = RunDir(args.run)
        info = run.read_info()
        if not info or not isinstance(info.get("config"), dict):
            raise NeuronscanError(f"{run.info_uri} is missing or holds no config; is {args.run!r} a probed run?")
        cfg = config_from_dict(apply_overrides(info["config"], ov), run.info_uri)
        with RunLock(run.root, command=f"neuronscan score (run {run.run_id})"):
            # Ray starts in the background while the score stage reads the run's labels, parts and image ids.
            init_ray(args.address or cfg.ray.address, background=True)
            summary = score_run(cfg, run, quiet=args.quiet)
            # The report shows run.json's settings and counts: rewrite it so it tells this scoring.
            if not args.no_report and (run.exists(run.path("report", "index.html")) or info.get("report")):
                report = report_run(run)
        out = args.run
        timings_at = f"{run.info_uri} (timings.score_phases)"
        shown_phases = summary.timings.get("phases_s", {})
    else:
        if not (args.activations and args.labels and args.out):
            raise NeuronscanError("score needs --run RUN_DIR, or all of --activations DIR --labels PARQUET --out DIR")
        if args.config:
            cfg = load_config(args.config, ov)
            score_cfg = cfg.score
        else:
            raw = apply_overrides({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]}}, ov)
            score_cfg = config_from_dict(raw, "--set").score
        t = time.perf_counter()
        labels = read_labels(args.labels)
        hierarchy = read_hierarchy(args.hierarchy) if args.hierarchy else None
        read_inputs_s = time.perf_counter() - t
        if not exists(args.activations):
            raise NeuronscanError(f"activations folder {args.activations!r} does not exist")
        # Ray starts in the background while the score stage reads the image ids, builds the label matrix and
        # scores the first shards itself (small inputs: all of them, and no Ray is started).
        ray_future = init_ray(args.address, background=True)
        # This command needs Ray only for the shards: it stops while the tables are written.
        summary = run_score(activations_dir=args.activations, labels=labels, out_dir=args.out, score_cfg=score_cfg,
                            hierarchy=hierarchy, quiet=args.quiet, stop_ray=True)
        out = args.out
        score_json = join(out, "score.json")
        timings = dict(summary.timings)
        phases = {"startup": round(startup_s, 3)} if startup_s is not None else {}
        phases["read_labels"] = round(read_inputs_s, 3)
        # The CLI's own steps before run_score (config, the Ray start request) go to "other".
        for key, value in timings.get("phases_s", {}).items():
            phases[key] = round(phases.get(key, 0.0) + value, 3)
        total = (startup_s or 0.0) + (time.perf_counter() - t_cmd)
        phases["other"] = round(max(0.0, total - sum(v for k, v in phases.items() if k != "other")), 3)
        timings["phases_s"] = phases
        timings["total_s"] = round(total, 3)
        timings["score_s"] = summary.timings.get("total_s")
        write_json_atomic({
            "command": "neuronscan score",
            "activations": args.activations,
            "labels": args.labels,
            "hierarchy": args.hierarchy,
            "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            # Unless the shards were all scored before the Ray start (begun in the background) was done.
            "ray": (ray_future.result() if ray_future.done() and not ray_future.cancelled()
                    and ray_future.exception() is None else {"address": args.address or "local", "used": False}),
            "units": summary.layers,
            "counts": {"concepts": summary.n_concepts, "scored_images": summary.n_images, "tests": summary.n_tests,
                       "significant_pairs": summary.n_significant},
            "score": summary.counts,
            "config": {"score": score_cfg.model_dump(mode="json")},
            "timings": timings,
        }, score_json)
        timings_at = score_json
        shown_phases = phases
    print(f"scored {sum(summary.layers.values()):,} units × {summary.n_concepts:,} concepts on "
          f"{summary.n_images:,} images in {summary.seconds:.1f} s; {summary.n_significant:,} of {summary.n_tests:,} "
          "pairs significant")
    print(f"  {out.rstrip('/')}/neuron_concepts.parquet\n  {out.rstrip('/')}/neurons.parquet")
    shown = sorted(((k, v) for k, v in shown_phases.items() if v >= 0.05), key=lambda kv: -kv[1])[:6]
    if shown:
        print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in shown) + f" (per phase: {timings_at})")
    print_top(summary.top_units)
    if report:
        print(f"\nreport: {report}")
    return 0


def _cmd_validate(args) -> int:
    from neuronscan.config import load_config

    cfg = load_config(args.config, overrides(args))
    if args.check_model:
        from neuronscan.models import build_model, list_layers, resolve_layers

        spec = build_model(cfg.model.name, source=cfg.model.source, weights=cfg.model.weights,
                           checkpoint=cfg.model.checkpoint, mean=cfg.model.mean, std=cfg.model.std)
        layers = resolve_layers(cfg.model.layers, [i.name for i in list_layers(spec)], model_name=cfg.model.name)
        print(f"model {cfg.model.name}: layers {', '.join(layers)}")
    print(f"{args.config}: OK")
    return 0


def _cmd_probe(args) -> int:
    return _cmd_run(args, stages=("probe",))
