"""The Jobs API address is checked in seconds: nothing listening is one line naming the address (no Ray started)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from neuronscan.cli import main
from neuronscan.errors import NeuronscanError
from neuronscan.jobs import job_logs, job_status
from neuronscan.jobs._submit import CONNECT_TIMEOUT_S, _job_call

FAST_S = CONNECT_TIMEOUT_S + 5  # Ray's own GCS lookup gives up after about 40 s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fake_dashboard():
    """An HTTP server that answers /api/version as a Ray dashboard does, and 404 for every job."""
    import ray

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/api/version":
                body = json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": "x",
                                   "session_name": "fake"}).encode()
                self.send_response(200)
            else:
                body = b"Job does not exist"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("form", ["{host}", "http://{host}"])
@pytest.mark.parametrize("command", ["status", "logs"])
def test_an_address_where_nothing_listens_fails_fast_in_one_line(capsys, monkeypatch, form, command):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _closed_port()
    started = time.monotonic()
    code = main([command, "raysubmit_x", "--address", form.format(host=f"127.0.0.1:{port}")])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < FAST_S, f"took {seconds:.1f} s"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: cannot reach the Ray Jobs API at http://127.0.0.1:{port} (connection refused on "
                          f"127.0.0.1:{port}): is the cluster up?"), err


def test_a_ray_client_address_is_checked_too(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(NeuronscanError, match=rf"cannot reach the Ray Client server at ray://127.0.0.1:{port} "):
        job_status("raysubmit_x", address=f"ray://127.0.0.1:{port}")
    assert time.monotonic() - started < FAST_S


def test_the_address_in_ray_address_is_checked(monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(NeuronscanError, match=rf"cannot reach the Ray Jobs API at http://127.0.0.1:{port} "):
        job_logs("raysubmit_x", address=None)


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "http://[::1", "http://:8265"])
def test_a_malformed_address_is_one_error_naming_it(address):
    with pytest.raises(NeuronscanError, match=f"Ray address {address!r}".replace("[", r"\[")):
        job_status("raysubmit_x", address=address)


def test_a_bare_host_port_serving_the_jobs_api_is_used_as_http(fake_dashboard, monkeypatch):
    # Ray alone reads a bare HOST:PORT as a GCS address: on a dashboard port it retries for ~40 s, then RpcError.
    # RAY_ADDRESS (which Ray's client prefers to its argument) does not override the address given.
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(NeuronscanError, match=f"no job 'raysubmit_x' on the Ray cluster at '{fake_dashboard}'"):
        job_status("raysubmit_x", address=fake_dashboard)
    assert time.monotonic() - started < FAST_S


def test_a_connection_lost_after_the_check_is_one_error():
    import requests

    def lost(_client):
        raise requests.exceptions.ConnectionError("Connection aborted.\nRemoteDisconnected('closed')")

    with pytest.raises(NeuronscanError) as info:
        _job_call(None, "http://127.0.0.1:8265", "raysubmit_x", "get the status", lost)
    assert str(info.value) == ("could not get the status of job 'raysubmit_x': lost the connection to the Ray Jobs "
                               "API at 'http://127.0.0.1:8265' (Connection aborted. RemoteDisconnected('closed'))")
