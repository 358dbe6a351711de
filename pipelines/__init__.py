"""Ray dataflows: probe, score, hierarchy, audit. The CLI (a submitted job runs it too) calls only these:

- `run_audit` — probe → score → (hierarchy → spatial, when enabled) → report under ``OUT/<model>/<run_id>/``,
  with ``run.json``;
- `score_run` — score a probed run in place; `report_run` — (re)write its HTML report;
- `hierarchy_run` — collaborative and multimodal units per level on a scored run (``pipelines/hierarchy.py``);
- `run_spatial` — HINT's spatial method (channel ranking, localisation IoU) on a probed run
  (``pipelines/hierarchy_spatial.py``);
- `run_score` — score activations made elsewhere (``<layer>/part-*.parquet`` + labels);
- `run_dir_for` — the run directory a config resolves to (fixed before a job is submitted);
- `init_ray` — join a cluster or start an embedded Ray.
"""

from pipelines._ray import init_ray
from pipelines.audit import report_run, run_audit, run_dir_for, score_run
from pipelines.hierarchy import hierarchy_run
from pipelines.hierarchy_spatial import run_spatial
from pipelines.score import run_score

__all__ = ["hierarchy_run", "init_ray", "report_run", "run_audit", "run_dir_for", "run_score", "run_spatial",
           "score_run"]
