"""A real Ray head with the Jobs API (dashboard) on 127.0.0.1: submit a tiny audit and find its run.

The head runs as ``ray start --head --block`` in its own session with a private ``--temp-dir`` and its
own ports, so it neither answers other tests' ``ray.init()`` (which only finds clusters through the
default temp dir or RAY_ADDRESS) nor collides with their ports. Teardown sends SIGTERM to that one
process (it stops every process it started) and then kills any leftover whose command line names the
private temp dir; it never runs ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from neuronscan.jobs import job_logs, job_status, submit_audit
from neuronscan.registry import list_runs

STARTUP_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420
ROOT = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _leftovers(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (the head's private temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("aiohttp_cors", reason="the Jobs API needs the dashboard: install ray[default]==2.60.0")
    from ray.job_submission import JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="nsray-", dir="/tmp")  # short: Ray puts unix sockets in it
    gcs, dash, client, agent = _free_ports(4)
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The job entrypoint runs `python`: this interpreter's environment, as an activated venv would give.
    # No graceful drain on SIGTERM: nothing here serves traffic, and it would hold teardown for 30 s.
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", "--num-cpus=2",
           "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = (Path(temp_dir) / "ray-start.log").read_text()[-3000:]
                pytest.fail(f"ray start exited {proc.returncode}:\n{tail}")
            try:
                JobSubmissionClient(address)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    pytest.fail(f"the Ray Jobs API at {address} did not come up in {STARTUP_TIMEOUT_S} s")
                time.sleep(0.5)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        time.sleep(1)
        for pid in _leftovers(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submitted_audit_lands_in_the_registry(ray_head, tmp_path):
    registry = tmp_path / "registry"
    config = tmp_path / "configs" / "tiny.yaml"  # outside the working dir: its text travels with the job
    config.parent.mkdir()
    config.write_text(f"""\
# python -m neuronscan submit tiny.yaml --address http://127.0.0.1:8265
run: {{name: submitted, out: {registry}}}
data:
  shapes_world: {{root: {tmp_path / "shapes"}, n_images: 60, size: 32, seed: 3}}
model: {{name: tinycnn, layers: [conv1, conv2], reduce: [mean]}}
probe: {{batch_size: 30, num_actors: 1, cpus_per_actor: 0.5, decode_cpus: 0.5, topk: 4}}
score: {{n_perm: 20, units_per_shard: 16, compositional: {{enabled: false}}}}
""")
    started = time.perf_counter()
    job_id = submit_audit(config, address=ray_head, overrides=["score.alpha=0.1"], run_id="job1",
                          env_vars={"HF_HUB_OFFLINE": "1"}, wait=True, timeout=JOB_TIMEOUT_S)
    seconds = time.perf_counter() - started
    status = job_status(job_id, address=ray_head)
    logs = job_logs(job_id, address=ray_head)
    assert status == "SUCCEEDED", logs[-4000:]
    print(f"submitted tiny audit: job {job_id} {status} in {seconds:.1f} s")

    runs = list_runs(str(registry))
    assert list(runs["run_id"]) == ["job1"] and list(runs["model"]) == ["tinycnn"]
    run = runs.iloc[0]
    assert run.status == "complete" and run.n_images == 60 and run.n_units == 8 + 16
    run_dir = Path(run.run_dir)
    table = pd.read_parquet(run_dir / "neuron_concepts.parquet")
    assert len(table) == 24 * run.n_concepts and set(table["layer"]) == {"conv1:mean", "conv2:mean"}
    info = pd.read_json(run_dir / "run.json", typ="series")
    assert info["config"]["score"]["alpha"] == 0.1  # the override travelled
    assert "run job1" in logs


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "http://127.0.0.1:{port}"])
def test_submit_to_an_address_where_nothing_listens_fails_fast_in_one_line(form):
    # Before the address was checked, a bare HOST:PORT went to Ray's GCS lookup: an RpcError traceback after ~40 s.
    port = _free_ports(1)[0]  # closed again: nothing listens there
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "neuronscan", "submit", "--address", form.format(port=port),
                           "configs/demo.yaml"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot reach the Ray Jobs API at http://127.0.0.1:{port} (connection "
                                  f"refused on 127.0.0.1:{port}): is the cluster up?"), proc.stderr
    assert seconds < 20, f"took {seconds:.1f} s"
    assert proc.stdout == ""  # no job id: nothing was submitted
