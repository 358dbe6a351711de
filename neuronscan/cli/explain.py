"""Explain command: ``explain-train`` (sparse autoencoders and Zhang's part explainers of a layer, trained with Ray
Train on a probed run; their components become derived layers, scored and reported like units)."""

from __future__ import annotations

import math
import textwrap

from neuronscan.cli._common import FORMATTER, add_config_args, examples, overrides


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser(
        "explain-train", help="train explainers (sparse autoencoders, part explainers) of a layer; audit their "
        "components like units", formatter_class=FORMATTER,
        description=textwrap.dedent("""\
            On a probed run (the one CONFIG names: run.out, model, run.run_id), train the explainers of the
            config's explain section with Ray Train (explain.num_workers workers, GPUs when explain.use_gpu,
            explain.cpus_per_worker CPUs each):
              family sae   a sparse autoencoder (TopK or JumpReLU) on the probe's per-image statistic of a layer
                           (explain.layer: conv4:mean);
              family part  Zhang et al.'s explainer network on a conv layer's feature maps (explain.layer: conv3),
                           the model run again on the run's images.
            Checkpoints go to RUN/explain/<layer>@<name>/checkpoints after every epoch; rerunning resumes from the
            last one (a complete explainer with the same settings is skipped; other settings train anew). Then
            the components' activations on every probed image are written as the derived layer <layer>@<name>
            (RUN/activations/, RUN/topk/), the run is scored again with it (unless --no-score) and its report
            rewritten: components appear beside the units. Figures (explained variance, the model's accuracy
            with the reconstruction substituted, mean L0, dead components, location instability, the fraction of
            components with a significant concept against the raw units) are in
            RUN/explain/<layer>@<name>/metrics.json and README.md. Settings: --set explain.KEY=VALUE."""),
        epilog=examples("neuronscan explain-train configs/demo_explain.yaml",
                        "neuronscan explain-train configs/demo.yaml --set explain.layer=conv4:mean "
                        "--set explain.sparsity.k=16",
                        "neuronscan explain-train configs/demo.yaml --set explain.family=part "
                        "--set explain.layer=conv3 --set explain.use_gpu=true"))
    add_config_args(p)
    p.add_argument("--no-score", action="store_true",
                   help="only train and write the derived layers; do not score the run again (nor its report)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite the run's HTML report")
    return {"explain-train": _cmd_explain_train}


def _cmd_explain_train(args) -> int:
    from neuronscan.config import load_config
    from neuronscan.errors import NeuronscanError
    from neuronscan.io import RunDir, read_json
    from pipelines import run_audit, run_dir_for

    ov = overrides(args)
    if args.out:
        ov["run.out"] = args.out
    cfg = load_config(args.config, ov)
    if not cfg.explain.explainers():
        raise NeuronscanError(f"{args.config}: the explain section names no explainer; set explain.layer (and "
                              "explain.family), e.g. --set explain.layer=conv4:mean")
    run, run_id = run_dir_for(cfg)
    if cfg.run.run_id is None or not run.exists(run.images):
        raise NeuronscanError(f"no probed run at {run.root}: explain-train needs the run id of a probed run "
                              "(run.run_id in the config, or --run-id); probe it first with neuronscan probe CONFIG")
    stages = ("explain",) if args.no_score else ("explain", "score")
    result = run_audit(cfg, quiet=args.quiet, report=not (args.no_report or args.no_score), stages=stages)
    run = RunDir(result["run_dir"])
    print(f"\nexplain-train, run {run_id}:")
    print(f"  {'derived layer':<22} {'comp.':>6} {'EV':>6} {'acc rec/orig':>13} {'L0':>6} {'dead':>5} "
          f"{'signif. comp/raw':>17} {'AUPRC comp/raw':>15}")
    for s in cfg.explain.explainers():
        from neuronscan.io import join

        metrics = _metrics(run, s, read_json, join)
        if metrics is None:
            continue
        fid = metrics.get("fidelity") or {}
        acc = fid.get("accuracy") or {}
        interp = metrics.get("interpretability") or {}
        comp, raw = interp.get("components") or {}, interp.get("raw_units") or {}
        print(f"  {metrics['derived_layer']:<22} {metrics['components']:>6,} {_f(fid.get('explained_variance')):>6} "
              f"{_f(acc.get('reconstructed')) + '/' + _f(acc.get('original')):>13} "
              f"{_f(metrics['sparsity']['mean_l0'], 1):>6} {metrics['dead']['count']:>5,} "
              f"{_f(comp.get('frac_significant')) + '/' + _f(raw.get('frac_significant')):>17} "
              f"{_f(comp.get('mean_best_auprc')) + '/' + _f(raw.get('mean_best_auprc')):>15}")
        print(f"    {join(run.explain(metrics['derived_layer']), 'metrics.json')}")
    if result.get("report") and not (args.no_report or args.no_score):
        print(f"\nreport: {result['report']}")
    return 0


def _metrics(run, settings, read_json, join):
    from neuronscan.io import exists

    name = settings.layer if settings.family == "sae" else f"{settings.layer}:{settings.part.reduce}"
    uri = join(run.explain(f"{name}@{settings.resolved_name}"), "metrics.json")
    return read_json(uri) if exists(uri) else None


def _f(value, nd: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{nd}f}"
