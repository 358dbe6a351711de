"""The command line, as a user runs it: every subcommand, the reduced demo, and clear errors for bad input."""

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

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ["run", "probe", "score", "validate", "hierarchy", "describe", "discover", "explain-train", "layers",
               "models", "report", "diff", "runs", "sanity", "submit", "status", "logs"]


def ns(*args, cwd=ROOT, timeout=420):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "neuronscan", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr


def test_the_help_test_covers_every_subcommand():
    import argparse

    from neuronscan.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(cmd):
    proc = ns(cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout and f"neuronscan {cmd}" in proc.stdout


def test_models_and_layers():
    proc = ns("models")
    assert proc.returncode == 0 and "shapesnet" in proc.stdout and "tinycnn" in proc.stdout
    proc = ns("layers", "tinycnn")
    assert proc.returncode == 0, proc.stderr
    assert "conv2" in proc.stdout and "16" in proc.stdout
    proc = ns("layers", "resnet18", "--filter", "layer4*", "--depth", "1")
    assert proc.returncode == 0 and "layer4" in proc.stdout and "512" in proc.stdout


def test_validate_ok_and_typo(tmp_path):
    assert ns("validate", "configs/demo.yaml").returncode == 0
    bad = tmp_path / "typo.yaml"
    bad.write_text((ROOT / "configs" / "demo.yaml").read_text().replace("batch_size:", "batch_sise:"))
    assert_clean_error(ns("validate", bad), "probe.batch_sise: unknown key; did you mean 'batch_size'?")


def test_unknown_layer_shows_close_matches():
    proc = ns("validate", "configs/demo.yaml", "--check-model", "--set", "model.layers=[conv5]")
    assert_clean_error(proc, "unknown layer 'conv5'", "did you mean", "neuronscan layers shapesnet")


def test_missing_image_folder(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{folder: {tmp_path / 'nope'}}}\nmodel: {{name: tinycnn, layers: [conv1]}}\n"
                   f"run: {{out: {tmp_path / 'runs'}}}\n")
    assert_clean_error(ns("run", cfg), "data.folder", "does not exist")


def test_torchscript_model_is_refused_with_the_alternatives(tmp_path):
    import torch

    from neuronscan.models import build_model

    model = tmp_path / "tiny.ts"
    torch.jit.script(build_model("tinycnn").module).save(str(model))
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"not read: the model is refused first")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{folder: {tmp_path / 'imgs'}}}\nmodel: {{name: {model}, layers: [conv1]}}\n"
                   f"run: {{out: {tmp_path / 'runs'}}}\n")
    for proc in (ns("layers", model), ns("run", cfg)):
        assert_clean_error(proc, "is a TorchScript file", "cannot probe TorchScript", ".pt2", "package.module:function")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.parquet"))


def test_empty_labels_file(tmp_path):
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"image_id": pa.array([], pa.int64()), "concept": pa.array([], pa.string())}), labels)
    acts = tmp_path / "acts" / "l1"
    acts.mkdir(parents=True)
    pq.write_table(pa.table({"image_id": [1, 2], "u00000": pa.array([0.1, 0.2], pa.float32())}),
                   acts / "part-0.parquet")
    proc = ns("score", "--activations", tmp_path / "acts", "--labels", labels, "--out", tmp_path / "o")
    assert_clean_error(proc, "has no rows")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = ns("run", "configs/demo.yaml", "--out", out / "runs", "--run-id", "small",
              "--set", f"data.shapes_world.root={out / 'world'}", "--set", "data.shapes_world.n_images=160",
              "--set", "probe.batch_size=40", "--set", "score.n_perm=100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "runs" / "shapesnet" / "small", proc


def test_demo_run_outputs_and_summary(demo_run):
    run_dir, proc = demo_run
    assert f"outputs in {run_dir}/" in proc.stdout
    assert "top units per layer" in proc.stdout
    images = pd.read_parquet(run_dir / "images.parquet")
    assert len(images) == 160 and (images["status"] == "ok").all()
    assert list(images.columns) == ["image_id", "uri", "status", "error"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["counts"]["ok"] + info["counts"]["failed"] == info["counts"]["inputs"] == 160
    assert set(info["counts"]["units"]) == {f"conv{i}:{s}" for i in (2, 3, 4) for s in ("mean", "max")}
    assert info["timings"]["probe_s"] > 0 and info["timings"]["score_s"] > 0
    assert info["versions"]["torch"] and info["status"] == "complete"
    table = pd.read_parquet(run_dir / "neuron_concepts.parquet")
    n_units = sum(info["counts"]["units"].values())
    assert len(table) == n_units * info["counts"]["concepts"]
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    assert len(neurons) == n_units
    for layer, k in info["counts"]["units"].items():
        acts = pq.read_table(next((run_dir / "activations" / layer.replace(":", "__")).glob("part-*.parquet")))
        assert acts.schema.field("image_id").type == pa.int64()
        assert acts.num_columns == 1 + k and acts.schema.field("u00000").type == pa.float32()
        assert (run_dir / "topk" / f"{layer.replace(':', '__')}.parquet").exists()


def test_score_standalone_matches_run(demo_run, tmp_path):
    run_dir, _ = demo_run
    proc = ns("score", "--activations", run_dir / "activations", "--labels", run_dir / "labels.parquet",
              "--hierarchy", run_dir / "hierarchy.parquet", "--out", tmp_path / "scored", "--set", "score.n_perm=100")
    assert proc.returncode == 0, proc.stderr
    assert "neuron_concepts.parquet" in proc.stdout
    a = pd.read_parquet(run_dir / "neuron_concepts.parquet").sort_values(["layer", "unit", "concept"])
    b = pd.read_parquet(tmp_path / "scored" / "neuron_concepts.parquet").sort_values(["layer", "unit", "concept"])
    for col in ("auc", "auprc", "p_value", "q_value"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy())


def test_diff_reports_exactly_the_perturbed_units(demo_run, tmp_path):
    from tests.e2e._perturbed import PERTURBED_UNITS

    run_a, _ = demo_run
    proc = ns("run", "configs/demo.yaml", "--out", tmp_path / "runs", "--run-id", "perturbed", "--no-report",
              "--set", f"data.shapes_world.root={run_a.parents[2] / 'world'}",
              "--set", "data.shapes_world.n_images=160",
              "--set", "probe.batch_size=40", "--set", "score.n_perm=100",
              "--set", "model.name=tests.e2e._perturbed:perturbed_shapesnet", "--set", "model.source=factory")
    assert proc.returncode == 0, proc.stderr
    run_b = tmp_path / "runs" / "tests.e2e._perturbed_perturbed_shapesnet" / "perturbed"
    assert run_b.is_dir(), list((tmp_path / "runs").iterdir())
    out = tmp_path / "diff"
    proc = ns("diff", run_a, run_b, "--out", out, "--config", "configs/demo.yaml")
    assert proc.returncode in (0, 1), proc.stderr
    units = pd.read_parquet(out / "diff_units.parquet")
    changed = units[units["changed"]]
    assert set(changed["layer"]) <= {"conv4:mean", "conv4:max"}
    assert set(changed["unit"]) == set(PERTURBED_UNITS), changed[["layer", "unit", "best_concept_a", "best_concept_b"]]
    # the untouched layers and units are reported unchanged
    assert not units[units["layer"].str.startswith(("conv2", "conv3"))]["changed"].any()


def test_demo_report_in_headless_chromium(demo_run, tmp_path):
    """The demo run's own report: opens from file://, no page errors, AUC filter gives the table's count."""
    from tests.browser import Chromium, find_chromium

    if os.environ.get("NEURONSCAN_SKIP_BROWSER") == "1":
        pytest.skip("NEURONSCAN_SKIP_BROWSER=1")
    binary = find_chromium()
    assert binary, "Chromium is not installed: apt-get install -y chromium (or NEURONSCAN_SKIP_BROWSER=1)"
    run_dir, proc = demo_run
    index = run_dir / "report" / "index.html"
    assert f"report: {index}" in proc.stdout
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    with Chromium(binary, width=1280, height=900) as page:
        page.open(index)
        page.wait_for("document.documentElement.dataset.nsReady === '1'", 20)
        shot = page.screenshot(tmp_path / "overview.png")
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
        page.evaluate("location.hash = '#units'")
        page.wait_for("!document.getElementById('view-units').hidden")
        page.evaluate("(e => { e.value = 'all'; e.dispatchEvent(new Event('change')); })"
                      "(document.getElementById('f-layer'))")
        page.wait_for(f"document.getElementById('ns-count').dataset.count === '{len(neurons)}'", 15)
        page.type_text("#f-auc", "0.99")
        expected = int((neurons["best_auc"] >= 0.99).sum())
        assert 0 < expected < len(neurons)
        page.wait_for(f"document.getElementById('ns-count').dataset.count === '{expected}'", 15)
        page.screenshot(tmp_path / "units.png")
        assert page.errors == [], page.errors


def test_a_run_where_every_input_fails_ends_clearly(tmp_path):
    """0 processed + N failed: one line with the reasons, exit 2, run.json marked failed, every input recorded."""
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    for i in range(3):
        (images / f"not_an_image_{i}.jpg").write_text("plain text, not a JPEG")
    (images / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    cfg = tmp_path / "all_bad.yaml"
    cfg.write_text(f"run: {{out: {tmp_path / 'runs'}, run_id: bad}}\ndata: {{folder: {tmp_path / 'images'}}}\n"
                   "model: {name: tinycnn, layers: [conv1]}\nprobe: {batch_size: 2}\n")
    proc = ns("run", cfg, "--quiet")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "activations folder" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every input failed: 0 processed + 4 failed = 4 inputs"), proc.stderr
    assert "(not_an_image 3, missing 1)" in last, last
    run_dir = tmp_path / "runs" / "tinycnn" / "bad"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "every input failed" in info["error"]
    assert info["counts"]["failed"] == 4 and info["counts"]["ok"] == 0
    images_table = pd.read_parquet(run_dir / "images.parquet")
    assert len(images_table) == 4 and (images_table["status"] == "failed").all()
