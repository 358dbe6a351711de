"""Submit audits to a Ray cluster through the Ray Jobs API, and follow them.

An audit job runs ``python -m neuronscan.jobs run <config name> --run-id ID [--set …]`` on the cluster.
How the pieces travel:

- **Code**: by default this checkout (the folder holding ``pyproject.toml``, ``neuronscan/`` and
  ``pipelines/``) is the job's ``working_dir``; Ray zips it (minus `DEFAULT_EXCLUDES` and whatever
  ``.gitignore`` lists) and every worker imports neuronscan from it. Pass ``working_dir=None`` when the
  cluster's image already has the neuronscan version you want.
- **Dependencies**: not installed by default — a local head and the project's cluster image already
  have them, and a ``pip`` runtime env costs minutes per new node. Pass ``requirements=`` (e.g.
  `pinned_requirements()`) to have Ray install them into the job's environment.
- **Config**: its YAML text goes in the job's environment (``NEURONSCAN_JOB_CONFIG``), not as a path, so
  a config anywhere on the submitting machine works and the job runs exactly the file validated at
  submit time. Paths *inside* the config are read on the cluster: use ``s3://`` URIs or paths every
  node sees (relative paths resolve against the job's working directory).

The run id is fixed at submit time, so the run's directory (``run.out/<model>/<run_id>``) is known
before the job starts; it is recorded in the job's metadata.

Before Ray's client is made, the address gets a TCP check with a short timeout (`CONNECT_TIMEOUT_S`): an
address where nothing listens is one clear error within seconds, not Ray's GCS retry loop (about 40 s, then
an ``RpcError``). A bare ``HOST:PORT`` is the Jobs API at ``http://HOST:PORT`` when that answers as one, else
Ray's own reading (a GCS address it asks for the dashboard's URL).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import socket
import time
import tomllib
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from neuronscan.errors import InputError, NeuronscanError

__all__ = [
    "JobSpec",
    "build_job_spec",
    "submit_audit",
    "submit_spec",
    "job_status",
    "job_logs",
    "wait_for_job",
    "pinned_requirements",
    "repo_root",
    "DEFAULT_EXCLUDES",
    "CONFIG_ENV",
    "TERMINAL_STATUSES",
    "CONNECT_TIMEOUT_S",
]

CONFIG_ENV = "NEURONSCAN_JOB_CONFIG"
"""Environment variable of the job that carries the config's YAML text."""

MAX_CONFIG_BYTES = 64 * 1024
"""Larger configs do not fit an environment variable safely; reference big lists from files instead."""

DEFAULT_EXCLUDES = [
    "/.git",
    "/.venv",
    "/runs",
    "/data",
    "/build",
    "/benchmarks/results",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
]
"""Left out of the uploaded working dir (gitignore syntax; a leading ``/`` anchors at the working dir,
so the ``neuronscan/data`` package and the packaged ``neuronscan/demo/*.pt`` checkpoint still travel)."""

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

CONNECT_TIMEOUT_S = 3.0
"""Seconds to wait for a TCP connection to the cluster's address before saying it cannot be reached."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ray": 10001}
_DASHBOARD_PORT = 8265
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's client prefers these to the address it is given

_AUTO = "auto"


@dataclass
class JobSpec:
    """What `submit_audit` sends: the entrypoint, runtime env and metadata, and where the run will land."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    run_id: str
    run_dir: str
    submission_id: str
    config_name: str
    notes: list[str] = field(default_factory=list)


def repo_root() -> Path | None:
    """The checkout this neuronscan was imported from (with ``pyproject.toml`` and ``pipelines/``), else None."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "pipelines").is_dir() and (root / "neuronscan").is_dir():
        return root
    return None


def pinned_requirements(pyproject: str | os.PathLike | None = None) -> list[str]:
    """``project.dependencies`` of ``pyproject.toml`` (default: this checkout's), for a ``pip`` runtime env.

    Raises:
        InputError: no pyproject.toml is found, or it lists no dependencies.
    """
    if pyproject is None:
        root = repo_root()
        if root is None:
            raise InputError("no pyproject.toml beside this neuronscan install; pass the file or the requirements")
        pyproject = root / "pyproject.toml"
    path = Path(pyproject)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read dependencies from {str(path)!r}: {exc}") from exc
    deps = data.get("project", {}).get("dependencies") or []
    if not deps:
        raise InputError(f"{str(path)!r} lists no [project] dependencies")
    return [str(d) for d in deps]


def _resolve_working_dir(working_dir: str | os.PathLike | None) -> Path | None:
    if working_dir is None:
        return None
    if working_dir == _AUTO:
        return repo_root()
    path = Path(working_dir).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"working_dir {str(working_dir)!r} is not a folder")
    if not (path / "neuronscan").is_dir():
        raise InputError(
            f"working_dir {str(path)!r} holds no neuronscan/ package; pass the repository root, or "
            "working_dir=None when the cluster image has neuronscan installed"
        )
    return path


def build_job_spec(
    config_path: str | os.PathLike,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    run_id: str | None = None,
    working_dir: str | os.PathLike | None | Literal["auto"] = _AUTO,
    requirements: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    report: bool = True,
    restart: bool = False,
) -> JobSpec:
    """Validate the config (with its overrides) here and build the job that runs it on a cluster.

    With ``restart`` the job runs ``neuronscan run --restart``: an existing run of that id is deleted and
    started again (a resume is refused when the run was started with other settings).

    Arguments as in `submit_audit`. Nothing is contacted.

    Raises:
        ConfigError: the config or an override is invalid (every problem listed).
        InputError: the config is too large for the job environment, or ``working_dir`` is unusable.
    """
    from neuronscan.config import load_config, parse_overrides
    from neuronscan.io import RunDir, new_run_id

    path = Path(config_path)
    ov = parse_overrides(list(overrides))
    if run_id is not None:
        ov["run.run_id"] = run_id
    cfg = load_config(path, ov)
    run_id = cfg.run.run_id or new_run_id()
    run_dir = RunDir.for_run(cfg.run.out, cfg.model.name, run_id).root
    text = path.read_text()
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InputError(
            f"{str(path)!r} is {len(text.encode()):,} bytes; a submitted config may be at most {MAX_CONFIG_BYTES:,} "
            "(move long lists, e.g. a vocabulary, into files the config references)"
        )
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name) or "config.yaml"
    args = ["python", "-m", "neuronscan.jobs", "run", name, "--run-id", run_id]
    for item in overrides:
        args += ["--set", item]
    if not report:
        args.append("--no-report")
    if restart:
        args.append("--restart")
    env = {**(env_vars or {}), CONFIG_ENV: text}
    runtime_env: dict[str, Any] = {"env_vars": env}
    notes = []
    wd = _resolve_working_dir(working_dir)
    if wd is not None:
        runtime_env["working_dir"] = str(wd)
        runtime_env["excludes"] = list(DEFAULT_EXCLUDES)
    else:
        notes.append("no working_dir: the cluster's installed neuronscan runs the job")
    if requirements:
        runtime_env["pip"] = {"packages": list(requirements), "pip_check": False}
    safe_id = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id)
    return JobSpec(
        entrypoint=shlex.join(args),
        runtime_env=runtime_env,
        metadata={"neuronscan_run_id": run_id, "neuronscan_run_dir": run_dir, "neuronscan_config": str(path)},
        run_id=run_id,
        run_dir=run_dir,
        submission_id=f"neuronscan-{safe_id}-{uuid.uuid4().hex[:6]}",
        config_name=name,
        notes=notes,
    )


def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to ``host:port`` fails within ``timeout`` seconds; None when it connects."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror or exc}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except ConnectionRefusedError:
        return f"connection refused on {host}:{port}"
    except OSError as exc:
        return f"{exc.strerror or exc} on {host}:{port}"


def _answers_jobs_api(url: str, timeout: float) -> bool:
    """Whether ``url`` serves the Ray dashboard's ``/api/version`` (the Jobs API lives beside it)."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout) as response:  # noqa: S310 - http(s) only
            return "ray_version" in json.loads(response.read(65536))
    except (OSError, ValueError, http.client.HTTPException):  # URLError is an OSError
        return False


def _checked_address(address: str) -> str:
    """``address`` as Ray's client should get it, once something is found listening there.

    Raises:
        NeuronscanError: the address is malformed, its host does not resolve, or nothing accepts a connection
            on its port within `CONNECT_TIMEOUT_S`; the message names the address and the reason.
    """
    address = address.strip()
    scheme, sep, _ = address.partition("://")
    scheme = scheme.lower() if sep else ""
    if address == "auto" or (sep and scheme not in _DEFAULT_PORTS):
        return address  # a local cluster Ray finds itself, or a provider's scheme (anyscale://) Ray resolves
    url = address if sep else f"http://{address}"
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError as exc:
        raise NeuronscanError(f"Ray address {address!r} is not HOST:PORT or a URL ({exc}); "
                              "e.g. http://127.0.0.1:8265") from exc
    host = parsed.hostname
    if not host:
        raise NeuronscanError(f"Ray address {address!r} names no host; e.g. http://127.0.0.1:8265")
    if port is None:
        port = _DEFAULT_PORTS[scheme] if sep else _DASHBOARD_PORT
        if not sep:
            url = f"http://{address}:{port}"
    what = "Ray Client server" if scheme == "ray" else "Ray Jobs API"
    reason = _unreachable(host, port, CONNECT_TIMEOUT_S)
    if reason:
        raise NeuronscanError(
            f"cannot reach the {what} at {url} ({reason}): is the cluster up? The Jobs API is served by the "
            f"head's dashboard (default port {_DASHBOARD_PORT}; the head needs ray[default] and "
            "--include-dashboard=true); from outside Kubernetes forward it first: "
            "kubectl port-forward svc/neuronscan-head-svc 8265:8265"
        )
    if sep or _answers_jobs_api(url, CONNECT_TIMEOUT_S):
        return url
    return address  # something else listens there: Ray reads a bare HOST:PORT as a GCS address


@contextlib.contextmanager
def _address_wins(address: str):
    """While Ray's client is made, hide RAY_ADDRESS / RAY_API_SERVER_ADDRESS: it prefers them to its argument."""
    keys = () if address == "auto" else _ADDRESS_ENV  # 'auto' means: what RAY_ADDRESS says, else a local Ray
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _client(address: str | None):
    """A JobSubmissionClient for ``address`` (default ``RAY_ADDRESS``), with a clear error when unreachable."""
    from ray.exceptions import RpcError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise NeuronscanError(
            "no Ray address: pass the cluster's dashboard address, e.g. http://127.0.0.1:8265 "
            "(kubectl port-forward svc/neuronscan-head-svc 8265:8265), or set RAY_ADDRESS"
        )
    target = _checked_address(address)
    try:
        with _address_wins(target):
            return JobSubmissionClient(target)
    except (ConnectionError, ValueError, RuntimeError, RpcError) as exc:
        raise NeuronscanError(
            f"cannot reach the Ray Jobs API at {target}: {_one_line(exc)}. The Jobs API is served by the head's "
            "dashboard (default port 8265; the head needs ray[default] and --include-dashboard=true)"
        ) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _job_call(client, address: str | None, job_id: str, what: str, call):
    """Run ``call(client)``, turning the SDK's errors into one clear message."""
    try:
        return call(client)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise NeuronscanError(f"no job {job_id!r} on the Ray cluster at {address!r}") from exc
        raise NeuronscanError(f"could not {what} of job {job_id!r}: {exc}") from exc
    except OSError as exc:  # requests' ConnectionError/Timeout: the head went away after the client was made
        raise NeuronscanError(f"could not {what} of job {job_id!r}: lost the connection to the Ray Jobs API "
                              f"at {address!r} ({_one_line(exc)})") from exc


def _status(client, address: str | None, job_id: str) -> str:
    status = _job_call(client, address, job_id, "get the status", lambda c: c.get_job_status(job_id))
    return str(getattr(status, "value", status))


def submit_audit(
    config_path: str | os.PathLike,
    *,
    address: str | None,
    overrides: list[str] | tuple[str, ...] = (),
    run_id: str | None = None,
    working_dir: str | os.PathLike | None | Literal["auto"] = _AUTO,
    requirements: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    report: bool = True,
    wait: bool = False,
    timeout: float | None = None,
) -> str:
    """Submit an audit (``neuronscan run CONFIG``) as a Ray job; return its job id.

    Args:
        config_path: the YAML run config, anywhere on this machine (its text travels with the job).
        address: the Jobs API address, ``http://HEAD:8265``; None uses ``RAY_ADDRESS``.
        overrides: ``KEY=VALUE`` settings, as ``--set`` on the command line.
        run_id: the run id; default a new timestamp id, fixed now (see the job's metadata for the run dir).
        working_dir: folder uploaded as the job's code; ``"auto"`` (default) is this checkout, None uploads
            nothing (the cluster image's neuronscan runs).
        requirements: pip requirements to install for the job (e.g. `pinned_requirements()`); default none,
            since a local head and the project's image already have them.
        env_vars: extra environment variables of the job (never put credentials here: they are visible in
            the dashboard; give the cluster its own).
        report: write the HTML report at the end of the run.
        wait: block until the job ends (see `wait_for_job`); the job id is returned either way.
        timeout: seconds to wait when ``wait`` (None: no limit).

    Raises:
        ConfigError: the config or an override is invalid (checked before anything is sent).
        NeuronscanError: the cluster cannot be reached or refuses the job.
        TimeoutError: ``wait`` and the job did not end within ``timeout``.

    Example:
        >>> job = submit_audit("configs/demo.yaml", address="http://127.0.0.1:8265")  # doctest: +SKIP
        >>> wait_for_job(job, address="http://127.0.0.1:8265", timeout=3600)  # doctest: +SKIP
        'SUCCEEDED'
    """
    spec = build_job_spec(config_path, overrides=overrides, run_id=run_id, working_dir=working_dir,
                          requirements=requirements, env_vars=env_vars, report=report)
    job_id = submit_spec(spec, address=address)
    if wait:
        wait_for_job(job_id, address=address, timeout=timeout)
    return job_id


def submit_spec(spec: JobSpec, *, address: str | None) -> str:
    """Submit a job built by `build_job_spec` (whose ``run_dir`` tells where the run will land); return its id.

    Raises:
        NeuronscanError: the cluster cannot be reached or refuses the job.
    """
    client = _client(address)
    try:
        return client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env, metadata=spec.metadata,
                                 submission_id=spec.submission_id)
    except (RuntimeError, ValueError) as exc:
        raise NeuronscanError(f"the Ray cluster at {address!r} refused the job: {exc}") from exc
    except OSError as exc:  # requests' ConnectionError/Timeout: the head went away after the client was made
        raise NeuronscanError(f"lost the connection to the Ray Jobs API at {address!r} while submitting the job "
                              f"({_one_line(exc)})") from exc


def job_status(job_id: str, *, address: str | None) -> str:
    """The job's status: ``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``.

    Raises:
        NeuronscanError: no such job, or the cluster cannot be reached.
    """
    return _status(_client(address), address, job_id)


def job_logs(job_id: str, *, address: str | None) -> str:
    """Everything the job's driver printed so far.

    Raises:
        NeuronscanError: no such job, or the cluster cannot be reached.
    """
    return _job_call(_client(address), address, job_id, "get the logs", lambda c: c.get_job_logs(job_id))


def wait_for_job(job_id: str, *, address: str | None, timeout: float | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job ends; return its final status (``SUCCEEDED``, ``FAILED`` or ``STOPPED``).

    Raises:
        TimeoutError: the job is still running after ``timeout`` seconds (it keeps running).
        NeuronscanError: no such job, or the cluster cannot be reached.
    """
    client = _client(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = _status(client, address, job_id)
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id!r} is still {status} after {timeout:g} s; it keeps running")
        time.sleep(poll_s)
