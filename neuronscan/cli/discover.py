"""Concept discovery command: ``discover`` (CRAFT and holistic CRAFT: per class, the concepts a layer uses for
it, their importance, fidelity metrics, strategies and names)."""

from __future__ import annotations

import json
import textwrap

from neuronscan.cli._common import FORMATTER, add_config_args, examples, overrides


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("discover", help="discover the concepts a layer uses for each class (CRAFT), their importance "
                       "and names", formatter_class=FORMATTER,
                       description=textwrap.dedent("""\
                           Concept discovery on the config's run (probed first if it is not): for each class of
                           discover.classes, the latent of its images at discover.layer — of crops of them
                           (source: crops, CRAFT) or of every feature-map position (source: positions, holistic
                           CRAFT) — factorised into discover.n_concepts concepts (nmf; pca, ica, kmeans,
                           sparse_coding); each concept's importance for the class logit (Sobol total indices,
                           gradient x input, occlusion); C-Deletion, C-Insertion, C-µFidelity; reconstruction
                           error, sparsity, stability; the class's strategies (images grouped by dominant concept:
                           prevalence, reliability); and a name for every concept, its per-image coefficient
                           scored against the run's labels like a unit. Writes RUN/discover/ (tables,
                           discover.json, activations/, scored/) and rewrites the run's report when it has one.
                           Settings: the config's discover section (--set discover.KEY=VALUE)."""),
                       epilog=examples("neuronscan discover configs/demo_discover.yaml",
                                       "neuronscan discover configs/demo_discover.yaml --set discover.source=positions "
                                       "--set 'discover.classes=[red, circle]'",
                                       "neuronscan discover configs/demo_discover.yaml --set discover.method=pca"))
    add_config_args(p)
    p.add_argument("--no-report", action="store_true", help="do not rewrite the run's HTML report")
    return {"discover": _cmd_discover}


def _cmd_discover(args) -> int:
    from neuronscan.config import load_config
    from neuronscan.io import read_json
    from pipelines import report_run, run_audit, run_dir_for

    ov = overrides(args)
    if args.out:
        ov["run.out"] = args.out
    cfg = load_config(args.config, ov)
    run, _run_id = run_dir_for(cfg)
    if not cfg.run.run_id:  # the run to discover in must be known: a new id is a new run, probed first
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"run_id": run.run_id})})
    stages = ("discover",) if run.exists(run.images) else ("probe", "discover")
    run_audit(cfg, quiet=args.quiet, report=False, stages=stages)
    report = None
    if not args.no_report and run.exists(run.neurons):
        report = report_run(run)
    summary = read_json(run.path("discover", "discover.json"))
    _print_summary(summary, run.root)
    if report:
        print(f"\nreport: {report}")
    return 0


def _fmt(v, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def _print_summary(summary: dict, root: str) -> None:
    counts, timings = summary.get("counts", {}), summary.get("timings", {})
    s = summary.get("settings", {})
    print(f"discover: {counts.get('classes', 0)} class(es) at {summary.get('layer')} ({s.get('source')}, "
          f"{s.get('method')}, {s.get('n_concepts')} concepts), {counts.get('named_concepts', 0)} of "
          f"{counts.get('concepts', 0)} concepts named, in {_fmt(timings.get('seconds'), '.1f')} s")
    for c in summary.get("classes", []):
        q, m = c.get("quality", {}), c.get("metrics", {}).get("sobol", {})
        print(f"  {c['class']}: {q.get('n_images')} images, reconstruction error "
              f"{_fmt(q.get('reconstruction_error'))}, stability {_fmt(q.get('stability'))}, "
              f"C-Deletion {_fmt(m.get('c_deletion'), '.2f')}, C-Insertion {_fmt(m.get('c_insertion'), '.2f')}, "
              f"C-µFidelity {_fmt(m.get('c_mufidelity'))} (Sobol ranking)")
        for x in c.get("concepts", [])[:5]:
            name = json.dumps(x.get("name")) if x.get("name") is not None else "—"
            print(f"    concept {x['concept']:>2}: Sobol {_fmt(x.get('sobol'))}  prevalence "
                  f"{_fmt(x.get('prevalence'), '.2f')}  name {name} (AUC {_fmt(x.get('name_auc'))}, "
                  f"q {_fmt(x.get('name_q'), '.2g')})")
    if summary.get("skipped"):
        print(f"  skipped: {', '.join(f'{k} ({v})' for k, v in summary['skipped'].items())}")
    print(f"outputs in {root}/discover/")
