"""build_job_spec and the job entrypoint, without a cluster (the real submission: tests/integration/test_submit.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from neuronscan.errors import ConfigError, InputError, NeuronscanError
from neuronscan.jobs import build_job_spec, job_status, pinned_requirements
from neuronscan.jobs._entry import main as entry_main
from neuronscan.jobs._submit import CONFIG_ENV, DEFAULT_EXCLUDES, repo_root

CONFIG = """\
# a tiny audit
run: {out: /tmp/registry}
data: {shapes_world: {root: /tmp/shapes, n_images: 20, size: 32}}
model: {name: tinycnn, layers: [conv1]}
"""


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "elsewhere" / "tiny audit.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


def test_spec_carries_config_text_run_id_and_overrides(config):
    spec = build_job_spec(config, overrides=["score.n_perm=0", "probe.batch_size=8"], run_id="r1", report=False)
    assert shlex.split(spec.entrypoint) == ["python", "-m", "neuronscan.jobs", "run", "tiny_audit.yaml", "--run-id",
                                            "r1", "--set", "score.n_perm=0", "--set", "probe.batch_size=8",
                                            "--no-report"]
    assert spec.runtime_env["env_vars"][CONFIG_ENV] == CONFIG
    assert spec.run_dir == "/tmp/registry/tinycnn/r1" and spec.metadata["neuronscan_run_dir"] == spec.run_dir
    assert spec.runtime_env["working_dir"] == str(repo_root())
    assert "pip" not in spec.runtime_env  # off by default: the head already has the dependencies


def test_restart_reaches_the_job(config):
    spec = build_job_spec(config, run_id="r1", restart=True)
    assert shlex.split(spec.entrypoint)[-1] == "--restart"
    assert "--restart" not in build_job_spec(config, run_id="r1").entrypoint


def test_new_run_id_is_fixed_at_submit_time(config):
    a, b = build_job_spec(config), build_job_spec(config)
    assert a.run_id != b.run_id and a.run_id[:8].isdigit()
    assert f"--run-id {a.run_id}" in a.entrypoint and a.run_dir.endswith(f"/tinycnn/{a.run_id}")
    assert a.submission_id.startswith(f"neuronscan-{a.run_id}-") and a.submission_id != b.submission_id


def test_requirements_and_working_dir_options(config, tmp_path):
    spec = build_job_spec(config, requirements=pinned_requirements(), working_dir=None, env_vars={"A": "1"})
    assert "working_dir" not in spec.runtime_env and "excludes" not in spec.runtime_env
    assert any(p.startswith("ray[") and "==2.60.0" in p for p in spec.runtime_env["pip"]["packages"])
    assert spec.runtime_env["env_vars"]["A"] == "1"
    with pytest.raises(InputError, match="holds no neuronscan/ package"):
        build_job_spec(config, working_dir=tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        build_job_spec(config, working_dir=tmp_path / "missing")


def test_invalid_config_fails_before_submitting(config):
    with pytest.raises(ConfigError, match="probe.batch_size"):
        build_job_spec(config, overrides=["probe.batch_size=0"])
    with pytest.raises(ConfigError, match="file not found"):
        build_job_spec(config.with_name("nope.yaml"))
    big = config.with_name("big.yaml")
    big.write_text(CONFIG + "#" * 70_000 + "\n")
    with pytest.raises(InputError, match="at most 65,536"):
        build_job_spec(big)


def test_excludes_keep_the_packages_and_checkpoint(tmp_path):
    """Ray's own packaging walk over a fake checkout: what would be uploaded."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files = ["neuronscan/__init__.py", "neuronscan/data/_sources.py", "neuronscan/demo/shapesnet.pt",
             "pipelines/score.py", "configs/demo.yaml", "pyproject.toml",
             "data/shapes_world/0001.png", "runs/shapesnet/demo/run.json", ".venv/bin/python", ".git/HEAD",
             "neuronscan/__pycache__/x.cpython-311.pyc", "neuronscan.egg-info/PKG-INFO",
             "benchmarks/results/x.json", "benchmarks/bench.py"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    seen: list[str] = []
    _dir_travel(tmp_path, [_get_excludes(tmp_path, DEFAULT_EXCLUDES)],
                lambda p: seen.append(str(p.relative_to(tmp_path))) if p.is_file() else None, include_gitignore=True)
    assert sorted(seen) == sorted(["neuronscan/__init__.py", "neuronscan/data/_sources.py",
                                   "neuronscan/demo/shapesnet.pt", "pipelines/score.py", "configs/demo.yaml",
                                   "pyproject.toml", "benchmarks/bench.py"])


def test_entry_runs_the_cli_on_the_carried_config(monkeypatch):
    calls = []

    def fake_cli(argv):
        path = Path(argv[1])
        calls.append((argv, path.name, path.read_text()))
        return 7

    monkeypatch.setattr("neuronscan.jobs._entry._run_cli", fake_cli)
    monkeypatch.setenv(CONFIG_ENV, CONFIG)
    assert entry_main(["run", "tiny.yaml", "--run-id", "r1"]) == 7
    (argv, name, text), = calls
    assert argv[0] == "run" and argv[2:] == ["--run-id", "r1"] and name == "tiny.yaml" and text == CONFIG
    assert not Path(argv[1]).exists()  # the temporary copy is gone
    monkeypatch.delenv(CONFIG_ENV)
    assert entry_main(["run", "tiny.yaml"]) == 2
    assert entry_main(["oops"]) == 2


def test_entry_runs_the_cli_in_a_child_process():
    from neuronscan.jobs._entry import _run_cli

    assert _run_cli(["--version"]) == 0
    assert _run_cli(["no-such-command"]) != 0


def test_unreachable_cluster_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(NeuronscanError, match="no Ray address"):
        job_status("raysubmit_x", address=None)
    with pytest.raises(NeuronscanError, match="cannot reach the Ray Jobs API"):
        job_status("raysubmit_x", address="http://127.0.0.1:9")
