"""A whole audit: probe → score → hierarchy → spatial (each when enabled) → report, with run.json, under the run
registry ``ROOT/<model>/<run_id>/``."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
import time

import pandas as pd

from neuronscan.config import RunConfig
from neuronscan.errors import NoImagesError
from neuronscan.io import RunDir, new_run_id, read_parquet

__all__ = ["run_audit", "run_dir_for", "versions", "score_run", "report_run"]


def run_dir_for(cfg: RunConfig) -> tuple[RunDir, str]:
    """The run directory ``run.out/<model>/<run_id>`` and the run id (a new one when unset).

    ``neuronscan submit`` resolves the same directory with `RunDir.for_run` before the job starts.
    """
    run_id = cfg.run.run_id or new_run_id()
    return RunDir.for_run(cfg.run.out, cfg.model.name, run_id), run_id


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("neuronscan", "torch", "torchvision", "ray", "numpy", "scipy", "pyarrow", "pandas", "open_clip"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is simply not listed
            continue
    return out


def score_run(cfg: RunConfig, run_dir: str | RunDir, *, quiet: bool = False):
    """Score a probed run in place (reads its activations, labels and hierarchy) and record it in run.json."""
    from pipelines.score import run_score

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    labels = read_parquet(run.labels).to_pandas()
    hierarchy = None
    if run.exists(run.hierarchy):
        h = read_parquet(run.hierarchy).to_pandas()
        hierarchy = list(zip(h["concept"], h["parent"]))
    summary = run_score(
        activations_dir=run.activations_dir,
        labels=labels,
        out_dir=run.root,
        score_cfg=cfg.score,
        hierarchy=hierarchy,
        run_dir=run.root,
        clip_cfg=cfg.probe.clip,
        quiet=quiet,
    )
    # Dict values merge one level deep: these keys join the probe's counts and timings, and the score
    # section of the recorded config becomes the one this stage ran with (a rescore with overrides).
    run.update_info({
        "counts": {"concepts": summary.n_concepts, "scored_images": summary.n_images, "tests": summary.n_tests,
                   "significant_pairs": summary.n_significant},
        # score_phases: where the score stage's time went (phases, Ray start, shard tasks; see ScoreSummary).
        "timings": {"score_s": round(summary.seconds, 3), "score_phases": summary.timings},
        "score": {**summary.counts, "scored": _now()},
        "config": {"score": cfg.score.model_dump(mode="json")},
    })
    if run.exists(run.path("explain")):
        from pipelines.explain import explain_interpretability

        explain_interpretability(run, alpha=cfg.score.alpha)  # explainers' components against the raw units
    return summary


def report_run(run: RunDir) -> str | None:
    """Write the run's HTML report (local runs) and record it in run.json; return its path."""
    if run.is_remote:
        return None
    from neuronscan.report import write_report

    t = time.perf_counter()
    path = write_report(run.root)
    run.update_info({"report": str(path), "timings": {"report_s": round(time.perf_counter() - t, 3)}})
    return str(path)


def run_audit(cfg: RunConfig, *, quiet: bool = False, report: bool = True, stages=("probe", "score"),
              restart: bool = False) -> dict:
    """Run the configured stages under the run directory and return the final run.json.

    The run directory is locked for the whole call (`neuronscan.io.RunLock`): a second writer on the same
    run id is refused at once. A run id that already exists is resumed only if its recorded fingerprint
    (`pipelines._fingerprint`) matches this config; ``restart`` deletes its outputs and starts it again.

    Raises:
        RunLockedError: another process is writing this run.
        RunMismatchError: the run was started with other settings (names the differing keys).
    """
    from neuronscan.io import RunLock

    run, run_id = run_dir_for(cfg)
    command = "run" if "score" in stages else ("discover" if "discover" in stages else "probe")
    with RunLock(run.root, command=f"neuronscan {command} (run {run_id})") as lock:
        return _locked_audit(cfg, run, run_id, quiet=quiet, report=report, stages=stages, restart=restart,
                             lock_token=lock.holder["token"])


def _locked_audit(cfg: RunConfig, run: RunDir, run_id: str, *, quiet: bool, report: bool, stages,
                  restart: bool, lock_token: str) -> dict:
    from neuronscan import __version__
    from neuronscan.io import scrub
    from pipelines._fingerprint import check_fingerprint, fingerprint
    from pipelines._ray import init_ray
    from pipelines.probe import prepare_probe

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if restart and run.exists():
        say(f"--restart: deleted {run.clear():,} file(s) of run {run_id}")
    # Check inputs and model before starting Ray or writing anything, so a typo costs seconds, not a half run.
    plan = prepare_probe(cfg, run.root) if "probe" in stages else None
    previous = run.read_info()
    fp = None
    if plan is not None:
        fp = fingerprint(cfg, plan, version=__version__)
        check_fingerprint(previous, fp, root=run.root, run_id=run_id)
        if previous and "fingerprint" not in previous and plan.resumed_plan:
            say(f"warning: run {run_id} predates run fingerprints; resuming it without checking its settings")
    say(f"run {run_id} → {run.root}")
    ray_info = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    started = _now()
    patch = {
        "run_id": run_id,
        "name": cfg.run.name,
        "run_dir": run.root,
        "status": "running",
        "started": started,
        "finished": None,
        "error": None,
        "model": {"name": cfg.model.name, "source": cfg.model.source, "weights": cfg.model.weights,
                  "checkpoint": cfg.model.checkpoint, "layers": cfg.model.layers, "reduce": cfg.model.reduce},
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
        "ray": ray_info,
    }
    if fp is not None:
        # Recorded before the first part is written: a resume compares against it.
        patch["fingerprint"] = fp
    run.update_info(patch)
    try:
        return _run_stages(cfg, run, plan, stages, report=report, quiet=quiet, lock_token=lock_token)
    except KeyboardInterrupt:
        run.update_info({"status": "interrupted", "finished": _now()})
        raise
    except Exception as exc:
        # run.json never stays "running" after the run ended: it says how it ended, and why.
        run.update_info({"status": "failed", "finished": _now(), "error": scrub(f"{type(exc).__name__}: {exc}")})
        raise


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _run_stages(cfg: RunConfig, run: RunDir, plan, stages, *, report: bool, quiet: bool, lock_token: str) -> dict:
    from pipelines.probe import run_probe

    if "probe" in stages:
        ps = run_probe(cfg, run.root, quiet=quiet, plan=plan, lock_token=lock_token)
        run.update_info({"counts": {"inputs": ps.n_inputs, "images": ps.n_inputs, "ok": ps.n_ok,
                                    "failed": ps.n_failed, "resumed_images": ps.resumed, "units": ps.layers},
                         "timings": {"probe_s": round(ps.seconds, 3)}, "failures": ps.failures,
                         "data": ps.extra.get("source", {}),
                         "probe": {"images_per_second": round(ps.images_per_second, 2),
                                   "steady_images_per_second": ps.extra.get("steady_images_per_second"),
                                   "phases_s": ps.extra.get("phases_s"),
                                   "part_rows": ps.extra.get("part_rows"),
                                   "image_size": ps.extra.get("image_size"),
                                   "actor_peak_rss_mib": ps.extra.get("actor_peak_rss_mib")}})
        if ps.n_ok == 0:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(ps.failures.items(), key=lambda kv: -kv[1]))
            raise NoImagesError(
                f"every input failed: 0 processed + {ps.n_failed:,} failed = {ps.n_inputs:,} inputs "
                f"({reasons or 'no reason recorded'}); nothing to score. The reason of each input is in {run.images}"
            )
    if "explain" in stages or ("probe" in stages and "score" in stages and cfg.explain.enabled):
        from pipelines.explain import explain_run

        explain_run(cfg, run, quiet=quiet, lock_token=lock_token)  # its derived layers are scored with the rest
    summary = None
    if "score" in stages:
        summary = score_run(cfg, run, quiet=quiet)
        if cfg.hierarchy.enabled:
            from pipelines.hierarchy import hierarchy_run

            hierarchy_run(cfg, run, quiet=quiet, address=cfg.ray.address)
        if cfg.hierarchy.spatial.enabled:
            from pipelines.hierarchy_spatial import run_spatial

            run_spatial(run, cfg, cfg.hierarchy.spatial, quiet=quiet, lock_token=lock_token)
        if cfg.describe.enabled:
            from pipelines.describe import describe_run

            describe_run(run, cfg, quiet=quiet, lock_token=lock_token)  # patch descriptions of the top images
    if "discover" in stages or ("score" in stages and cfg.discover.enabled):
        from pipelines.discover import discover_run

        discover_run(cfg, run, quiet=quiet, lock_token=lock_token, address=cfg.ray.address)
    if report and "score" in stages:
        report_run(run)
    final = run.update_info({"status": "complete", "finished": _now(), "error": None})
    final["_top_units"] = summary.top_units if summary is not None else pd.DataFrame()
    return final
