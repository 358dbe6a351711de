"""The score stage accounts for its time: every phase timed, the shards' own seconds summed, written where a
user looks (score.json beside the tables, run.json for a probed run), and scoring small inputs in the driver
(no Ray started) changes no number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronscan.config import config_from_dict
from neuronscan.io import RunDir, write_parquet_atomic
from pipelines.score import SHARD_PHASES, run_score

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES, N_UNITS, SHARD = 400, 10, 3
DRIVER_PHASES = {"list_parts", "read_image_ids", "label_matrix", "label_layout", "ray_wait", "put", "shards",
                 "reduce", "pair_table", "unit_summary", "write_neurons", "write_neuron_concepts", "summary", "other"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Activations in the probe's layout (two layers, parts of 150 rows) and labels with ties and a dead unit."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("timings")
    run = RunDir(str(root / "run"))
    ids = rng.permutation(np.arange(5000, 5000 + N_IMAGES)).astype(np.int64)
    concepts = {c: rng.random(N_IMAGES) < f for c, f in (("a", 0.3), ("b", 0.1), ("c", 0.5), ("d", 0.05))}
    acts = np.maximum(np.round(rng.normal(size=(N_IMAGES, N_UNITS)), 1), 0).astype(np.float32)
    acts[:, 0] += 2.0 * concepts["a"]
    acts[:, 5] = 0.5
    for layer, cols in (("layer3:mean", slice(0, 6)), ("layer4", slice(6, N_UNITS))):
        values = acts[:, cols]
        for p, rows in enumerate(np.array_split(np.arange(N_IMAGES), 3)):
            table = pa.table({"image_id": pa.array(ids[rows]),
                              **{f"u{k:05d}": pa.array(values[rows, k]) for k in range(values.shape[1])}})
            write_parquet_atomic(table, run.activation_part(layer, f"{p:05d}"), encoded_columns=["image_id"])
    labels = pd.DataFrame([(int(ids[i]), c) for c, m in concepts.items() for i in np.flatnonzero(m)],
                          columns=["image_id", "concept"])
    write_parquet_atomic(pa.Table.from_pandas(labels, preserve_index=False), run.labels)
    return root, run, labels


def _score_cfg(**score):
    base = {"n_perm": 50, "units_per_shard": SHARD, "compositional": {"max_length": 2}}
    return config_from_dict({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]},
                             "score": {**base, **score}})


def _tables(out: Path) -> dict[str, pa.Table]:
    return {name: pq.read_table(out / f"{name}.parquet") for name in ("neuron_concepts", "neurons")}


def _assert_bit_identical(a: dict[str, pa.Table], b: dict[str, pa.Table]) -> None:
    for name in a:
        assert a[name].schema.equals(b[name].schema), name
        assert a[name].num_rows == b[name].num_rows, name
        for col in a[name].column_names:
            x, y = a[name].column(col), b[name].column(col)
            if pa.types.is_floating(x.type):  # NaN != NaN for Arrow's equals: compare the bits
                xa, ya = x.to_numpy(), y.to_numpy()
                assert np.array_equal(xa.view(np.uint64), ya.view(np.uint64)), f"{name}.{col}"
            else:
                assert x.equals(y), f"{name}.{col}"


def _assert_phases_add_up(timings: dict) -> None:
    phases = timings["phases_s"]
    assert all(v >= 0 for v in phases.values()), phases
    assert sum(phases.values()) == pytest.approx(timings["total_s"], abs=0.002 * len(phases) + 0.01)


def test_the_command_line_writes_score_json_with_every_phase(data, tmp_path, request):
    """A fresh process on small inputs: the driver scores every shard, starts no Ray, and score.json tells all."""
    root, run, _ = data
    out = tmp_path / "scored"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "neuronscan", "score", "--activations", run.activations_dir,
                           "--labels", run.labels, "--out", str(out), "--set", "score.n_perm=50",
                           "--set", f"score.units_per_shard={SHARD}", "--set", "score.compositional.max_length=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "time: " in proc.stdout and "score.json" in proc.stdout
    info = json.loads((out / "score.json").read_text())
    timings = info["timings"]
    _assert_phases_add_up(timings)
    phases = timings["phases_s"]
    assert {"startup", "read_labels", "list_parts", "label_matrix", "reduce", "pair_table",
            "write_neuron_concepts", "summary"} <= set(phases)
    assert phases["startup"] > 0
    n_shards = -(-6 // SHARD) + -(-4 // SHARD)
    assert timings["shards"]["count"] == n_shards
    # Inputs this small are scored by the driver alone: no Ray is started for them.
    assert timings["shards_in_driver"] == n_shards and "shards_in_driver" in phases
    assert info["ray"] == {"address": "local", "used": False}
    assert info["counts"]["tests"] == N_UNITS * 4  # every concept has positives and negatives; dead units count
    assert info["units"] == {"layer3:mean": 6, "layer4": 4}
    assert info["config"]["score"]["n_perm"] == 50

    # The same numbers as Ray tasks give them (run_score on a running Ray never scores in the driver).
    request.getfixturevalue("ray_local")
    ref = tmp_path / "ref"
    summary = run_score(activations_dir=run.activations_dir, labels=pd.read_parquet(run.labels), out_dir=str(ref),
                        score_cfg=_score_cfg().score, quiet=True)
    assert "shards_in_driver" not in summary.timings
    _assert_bit_identical(_tables(out), _tables(ref))


def test_run_score_times_every_phase_and_sums_the_shards(ray_local, data, tmp_path):
    _, run, labels = data
    summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(tmp_path),
                        score_cfg=_score_cfg().score, quiet=True)
    t = summary.timings
    assert summary.seconds == t["total_s"] > 0
    assert DRIVER_PHASES <= set(t["phases_s"]), t["phases_s"]
    _assert_phases_add_up(t)
    shards = t["shards"]
    assert shards["count"] == 2 + 2
    assert set(shards["phases_s_sum"]) == set(SHARD_PHASES)
    per_phase = shards["phases_s_sum"]
    for phase in ("read", "rank", "scores", "permutation", "compositional"):
        assert per_phase[phase] > 0, phase
    assert per_phase["wpmi"] == 0
    assert sum(per_phase.values()) == pytest.approx(shards["task_s_sum"], abs=0.01)
    assert 0 < shards["task_s_max"] <= shards["task_s_sum"]
    assert t["bh_s"] >= 0 and t["write_neuron_concepts_s"] > 0


def test_steps_turned_off_take_no_time(ray_local, data, tmp_path):
    _, run, labels = data
    cfg = _score_cfg(n_perm=0, compositional={"enabled": False})
    summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(tmp_path),
                        score_cfg=cfg.score, quiet=True)
    per_phase = summary.timings["shards"]["phases_s_sum"]
    assert per_phase["permutation"] == 0 and per_phase["compositional"] == 0
    assert per_phase["rank"] > 0 and per_phase["scores"] > 0


def test_shards_scored_in_the_driver_equal_ray_tasks(ray_local, data, tmp_path, monkeypatch):
    """Small inputs whose Ray start was never begun are scored in the driver: the same numbers as Ray's."""
    from concurrent.futures import Future

    import pipelines._ray

    _, run, labels = data
    cfg = _score_cfg().score
    ray_only = tmp_path / "ray"
    summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(ray_only), score_cfg=cfg,
                        quiet=True)
    assert "shards_in_driver" not in summary.timings and "ray_wait" in summary.timings["phases_s"]

    monkeypatch.setattr(pipelines._ray, "local_ray_starting", lambda: Future())  # requested, not begun
    in_driver = tmp_path / "driver"
    summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(in_driver), score_cfg=cfg,
                        quiet=True)
    assert summary.timings["shards_in_driver"] == summary.timings["shards"]["count"] == 4
    assert summary.timings["phases_s"]["shards_in_driver"] > 0 and "ray_wait" not in summary.timings["phases_s"]
    _assert_bit_identical(_tables(in_driver), _tables(ray_only))


def test_the_local_executor_scores_every_shard_on_threads_and_starts_no_ray(ray_local, data, tmp_path,
                                                                          monkeypatch):
    """``score.executor: local``: every shard on a thread pool in this process, no Ray task and no Ray start
    begun, and the same bits as Ray tasks give."""
    import pipelines._ray
    import pipelines.score as pscore

    _, run, labels = data
    ray_only = tmp_path / "ray"
    run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(ray_only),
              score_cfg=_score_cfg().score, quiet=True)

    def no_ray(*args, **kwargs):
        raise AssertionError("the local executor used Ray")

    monkeypatch.setattr(pscore, "_dispatch", no_ray)
    monkeypatch.setattr(pipelines._ray, "begin_ray_start", no_ray)
    for threads in (None, 1, 3):
        out = tmp_path / f"local-{threads}"
        summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(out), quiet=True,
                            score_cfg=_score_cfg(executor="local", local_threads=threads).score)
        t = summary.timings
        assert t["shards_in_driver"] == t["shards"]["count"] == 4
        assert t["local_threads"] == (min(4, pscore._usable_cpus()) if threads is None else threads)
        assert t["phases_s"]["shards_in_driver"] > 0 and "ray_wait" not in t["phases_s"]
        _assert_phases_add_up(t)
        _assert_bit_identical(_tables(out), _tables(ray_only))


def test_a_failing_shard_on_the_local_executor_ends_the_run_with_its_error(data, tmp_path, monkeypatch):
    import pipelines.score as pscore
    from neuronscan.errors import NeuronscanError

    _, run, labels = data
    real = pscore.score_shard

    def flaky(files, columns, *args, **kwargs):
        if columns[0] == "u00003":
            raise pscore.PartFileError(f"{files[0]}: checksum mismatch in column u00003")
        return real(files, columns, *args, **kwargs)

    monkeypatch.setattr(pscore, "score_shard", flaky)
    with pytest.raises(NeuronscanError, match="checksum mismatch in column u00003"):
        run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(tmp_path / "out"), quiet=True,
                  score_cfg=_score_cfg(executor="local").score)
    assert not (tmp_path / "out" / "neuron_concepts.parquet").exists()


def test_the_driver_scores_shards_while_ray_starts_and_ray_takes_the_rest(ray_local, data, tmp_path, monkeypatch):
    """While an embedded Ray is starting, the driver scores shards itself; once it is up the rest go to Ray
    tasks. The numbers are the same as Ray's alone."""
    import pipelines._ray

    _, run, labels = data
    cfg = _score_cfg().score
    ray_only = tmp_path / "ray"
    run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(ray_only), score_cfg=cfg, quiet=True)

    class Starting:  # a start that is begun and comes up after the driver has scored two shards
        checks = 0

        def done(self) -> bool:
            Starting.checks += 1
            return Starting.checks > 2

    monkeypatch.setattr(pipelines._ray, "local_ray_starting", lambda: Starting())
    monkeypatch.setattr(pipelines._ray, "ray_start_begun", lambda: True)
    mixed = tmp_path / "mixed"
    summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(mixed), score_cfg=cfg,
                        quiet=True)
    t = summary.timings
    assert t["shards_while_ray_starts"] == 2 and t["shards"]["count"] == 4
    assert t["phases_s"]["shards_while_ray_starts"] > 0 and t["phases_s"]["shards"] > 0
    _assert_phases_add_up(t)
    _assert_bit_identical(_tables(mixed), _tables(ray_only))


def test_permutation_pvalues_do_not_depend_on_the_sharding(ray_local, data, tmp_path, monkeypatch):
    """The run's permutations are drawn once and shared: a pair's p_perm is that of one call over the whole
    layer, whatever units_per_shard; shards that draw the rows themselves (over the memory cap) agree."""
    import pipelines.score as pscore
    from neuronscan.concepts import build_label_matrix
    from neuronscan.io import read_parquet
    from neuronscan.stats import permutation_pvalues, rank_units

    _, run, labels = data
    tables = {}
    for shard in (SHARD, N_UNITS):
        out = tmp_path / f"shard{shard}"
        summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(out),
                            score_cfg=_score_cfg(units_per_shard=shard).score, quiet=True)
        assert "perm_draws" in summary.timings["phases_s"]
        tables[shard] = _tables(out)
    _assert_bit_identical(tables[SHARD], tables[N_UNITS])
    monkeypatch.setattr(pscore, "_SHARED_DRAWS_MAX_BYTES", 0)
    out = tmp_path / "own-draws"
    run_score(activations_dir=run.activations_dir, labels=labels, out_dir=str(out),
              score_cfg=_score_cfg().score, quiet=True)
    _assert_bit_identical(_tables(out), tables[SHARD])

    # The oracle: one call over the layer's units with the run's seed.
    pairs = tables[SHARD]["neuron_concepts"].to_pandas()
    pairs = pairs[(pairs["layer"] == "layer3:mean") & (pairs["n_perm"] > 0)]
    parts = sorted(Path(run.activation_part("layer3:mean", "00000")).parent.glob("*.parquet"))
    acts = pd.concat([read_parquet(str(f)).to_pandas() for f in parts]).sort_values("image_id")
    mat = build_label_matrix(labels, acts["image_id"].to_numpy())
    units = pairs["unit"].to_numpy()
    concepts = np.array([mat.concepts.index(c) for c in pairs["concept"]])
    values = acts[[f"u{k:05d}" for k in range(6)]].to_numpy(np.float64)
    ranks = rank_units(values)
    expected, _ = permutation_pvalues(ranks, mat.matrix, units, concepts, n_perm=50, seed=0)
    assert len(pairs) >= 6
    np.testing.assert_array_equal(pairs["p_perm"].to_numpy(), expected)
    # The formulas the shards found from their own ranks and U statistics: those of plain average ranks.
    from scipy.stats import rankdata

    from neuronscan.stats import compositional_search_units

    neurons = tables[SHARD]["neurons"].to_pandas()
    neurons = neurons[neurons["layer"] == "layer3:mean"].sort_values("unit")
    plain = compositional_search_units(rankdata(values, axis=0), mat.matrix, mat.concepts, max_length=2)
    assert [f.text if f else None for f in plain] == neurons["formula"].tolist()
    assert sum(f is not None for f in plain) >= 4


def test_a_rescore_records_its_phases_in_run_json(ray_local, data, tmp_path):
    from pipelines import score_run

    _, run, _ = data
    cfg = _score_cfg(n_perm=0)
    run.update_info({"config": cfg.model_dump(mode="json"), "timings": {"probe_s": 1.5}})
    summary = score_run(cfg, run, quiet=True)
    timings = RunDir(run.root).read_info()["timings"]
    assert timings["probe_s"] == 1.5  # the probe's timing stays
    assert timings["score_s"] == pytest.approx(summary.seconds, abs=0.001)
    assert timings["score_phases"]["phases_s"] == summary.timings["phases_s"]
    assert timings["score_phases"]["shards"]["count"] == 4


def test_a_requested_background_start_begins_only_when_asked(monkeypatch):
    """init_ray(background=True) for an embedded Ray starts nothing until the score stage (or a wait) asks."""
    import pipelines._ray as pray

    begun = []
    monkeypatch.setattr(pray, "_pending", None)
    monkeypatch.setattr(pray, "_ours", False)
    monkeypatch.setattr(pray, "_start_thread", lambda: type("Q", (), {"put": lambda self, s: begun.append(s)})())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    future = pray.init_ray(background=True)
    assert not future.done() and begun == [] and pray.local_ray_starting() is future
    assert pray.init_ray(background=True) is future  # one start per process
    pray.begin_ray_start()
    pray.begin_ray_start()
    assert len(begun) == 1 and begun[0].begun is not None

    monkeypatch.setattr(pray, "_pending", None)
    dropped = pray.init_ray(background=True)
    assert pray.release_ray() is None and dropped.cancelled()  # never begun: nothing to stop
    assert pray.local_ray_starting() is None and len(begun) == 1
