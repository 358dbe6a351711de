"""LLM-proposed vocabularies against fake OpenAI-compatible servers on 127.0.0.1.

Each server is an http.server in a thread of this process, bound to an ephemeral loopback port and shut
down by its fixture: one that answers well, one that answers HTTP 500, one that stalls past the
client's timeout, and ones that answer junk. Every test's traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from neuronscan.clip import _llm, builtin_vocabulary, propose_vocabulary, resolve_vocabulary
from neuronscan.clip._llm import chat_completions_url, clean_words, request_key
from neuronscan.config import config_from_dict
from neuronscan.errors import ConfigError

KEY = "sk-test-0123456789abcdef-secret"
WORDS = ["Red", "striped texture", "  wheel ", "red", "1. kitchen", "x" * 200, 42, "<b>bold</b>"]


def _completion(content) -> bytes:
    return json.dumps({"id": "c1", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class _Server:
    """A fake /v1/chat/completions endpoint; ``reply(handler_state) -> (status, body bytes)`` or ``'stall'``."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[dict] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = server.reply(self)
                if answer == "stall":
                    server.release.wait(10)  # released by the fixture's teardown
                    return
                status, payload = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(reply):
        servers.append(_Server(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    monkeypatch.setattr(_llm, "_BACKOFF_S", 0.01)


def _settings(url, tmp_path, **kw):
    return {"url": url, "model": "test-model", "n_words": 50, "timeout_s": 5.0, "retries": 0,
            "cache_dir": str(tmp_path / "cache"), **kw}


def test_good_server_words_are_cleaned_cached_and_the_key_stays_secret(serve, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NS_TEST_LLM_KEY", KEY)
    server = serve(lambda h: (200, _completion(json.dumps(WORDS))))
    settings = _settings(server.url, tmp_path, api_key_env="NS_TEST_LLM_KEY", prompt="give {n_words}: {concepts}")
    with caplog.at_level(logging.DEBUG, logger="neuronscan.clip._llm"):
        out = propose_vocabulary(settings, concepts=["circle", "red"])
    assert out.source == "llm" and out.reason == ""
    assert out.words == ["red", "striped texture", "wheel", "kitchen"]
    assert out.dropped == 3  # the 200-character word, 42 and the markup
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["body"]["model"] == "test-model" and request["body"]["temperature"] == 0.0
    assert request["body"]["messages"][-1] == {"role": "user", "content": "give 50: circle, red"}

    cache_files = list((tmp_path / "cache").iterdir())
    key = request_key(server.url + "/chat/completions", request["body"], 50)
    assert [p.name for p in cache_files] == [f"{key}.json"]
    assert out.cache_file == str(cache_files[0])
    entry = json.loads(cache_files[0].read_text())
    assert entry["words"] == out.words and entry["model"] == "test-model" and entry["format"] == 1
    assert KEY not in cache_files[0].read_text()
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_second_call_is_answered_from_the_cache(serve, tmp_path):
    server = serve(lambda h: (200, _completion('["red", "blue"]')))
    first = propose_vocabulary(_settings(server.url, tmp_path))
    second = propose_vocabulary(_settings(server.url, tmp_path))
    assert (first.source, second.source) == ("llm", "cache")
    assert second.words == first.words == ["red", "blue"]
    assert len(server.requests) == 1  # no second request
    # Another model, prompt or size is another request.
    propose_vocabulary(_settings(server.url, tmp_path, model="other"))
    propose_vocabulary(_settings(server.url, tmp_path, n_words=10))
    assert len(server.requests) == 3
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary file left behind


def test_a_corrupt_cache_entry_is_ignored_and_replaced(serve, tmp_path, caplog):
    server = serve(lambda h: (200, _completion('["red"]')))
    first = propose_vocabulary(_settings(server.url, tmp_path))
    with open(first.cache_file, "w") as f:
        f.write('{"words": [')  # a torn write
    with caplog.at_level(logging.WARNING, logger="neuronscan.clip._llm"):
        again = propose_vocabulary(_settings(server.url, tmp_path))
    assert again.source == "llm" and len(server.requests) == 2
    assert any("ignoring unreadable cache entry" in r.getMessage() for r in caplog.records)
    assert json.loads(open(first.cache_file).read())["words"] == ["red"]


def test_http_500_is_retried_then_falls_back_with_a_warning(serve, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("NS_TEST_LLM_KEY", KEY)

    def fail(handler):  # echoes the credential, as a careless proxy might
        return 500, f"internal error; you sent {handler.headers['Authorization']}".encode()

    server = serve(fail)
    settings = _settings(server.url, tmp_path, retries=2, api_key_env="NS_TEST_LLM_KEY", fallback="builtin:shapes")
    with caplog.at_level(logging.WARNING, logger="neuronscan.clip._llm"):
        out = propose_vocabulary(settings)
    assert out.source == "fallback" and out.words == builtin_vocabulary("shapes")
    assert len(server.requests) == 3  # bounded: 1 + retries
    assert "HTTP 500" in out.reason and "after 3 attempts" in out.reason
    messages = [r.getMessage() for r in caplog.records]
    assert any("using the vocabulary builtin:shapes (42 words) instead" in m for m in messages)
    assert all(KEY not in m for m in messages) and KEY not in out.reason
    assert "***" in out.reason
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # failures are not cached


def test_client_errors_are_not_retried(serve, tmp_path):
    server = serve(lambda h: (401, b'{"error": "bad key"}'))
    out = propose_vocabulary(_settings(server.url, tmp_path, retries=3))
    assert out.source == "fallback" and "HTTP 401" in out.reason
    assert len(server.requests) == 1


def test_a_stalled_server_times_out(serve, tmp_path):
    server = serve(lambda h: "stall")
    started = time.perf_counter()
    out = propose_vocabulary(_settings(server.url, tmp_path, timeout_s=0.3, retries=1))
    elapsed = time.perf_counter() - started
    assert out.source == "fallback" and "timeout_s=0.3" in out.reason
    assert out.words == builtin_vocabulary(_llm.DEFAULT_BUILTIN)
    assert len(server.requests) == 2 and elapsed < 3.0


def test_an_unreachable_endpoint_falls_back(tmp_path):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = propose_vocabulary(_settings(f"http://127.0.0.1:{port}/v1", tmp_path, retries=1))
    assert out.source == "fallback" and "unreachable" in out.reason and "after 2 attempts" in out.reason


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>not json</html>", "not JSON"),
        (json.dumps({"result": ["red"]}).encode(), "no choices[0].message.content"),
        (_completion("Sure! Some words: red, blue and green."), "not a JSON array"),
        (_completion('{"a": [1], "b": [2]}'), "not a JSON array"),
        (_completion("[]"), "no usable word"),
        (_completion(json.dumps(["x" * 300, "#$%", 7, ""])), "no usable word"),
        (_completion(None), "not text"),
    ],
)
def test_junk_replies_fall_back(serve, tmp_path, body, why):
    server = serve(lambda h: (200, body))
    out = propose_vocabulary(_settings(server.url, tmp_path, retries=2))
    assert out.source == "fallback" and why in out.reason
    assert len(server.requests) == 1  # junk is not retried
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    "content",
    ['```json\n["red", "blue"]\n```', '{"words": ["red", "blue"]}', 'Here you are: ["red", "blue"]'],
)
def test_common_reply_wrappings_are_read(serve, tmp_path, content):
    server = serve(lambda h: (200, _completion(content)))
    assert propose_vocabulary(_settings(server.url, tmp_path)).words == ["red", "blue"]


def test_at_most_n_words_are_kept(serve, tmp_path):
    server = serve(lambda h: (200, _completion(json.dumps([f"word {chr(97 + i)}" for i in range(26)]))))
    assert len(propose_vocabulary(_settings(server.url, tmp_path, n_words=5)).words) == 5


def test_a_missing_key_variable_falls_back_without_a_request(serve, tmp_path, monkeypatch):
    monkeypatch.delenv("NS_TEST_LLM_UNSET", raising=False)
    server = serve(lambda h: (200, _completion('["red"]')))
    out = propose_vocabulary(_settings(server.url, tmp_path, api_key_env="NS_TEST_LLM_UNSET"))
    assert out.source == "fallback" and "NS_TEST_LLM_UNSET is not set" in out.reason
    assert server.requests == []


def test_clean_words():
    words, dropped = clean_words(
        ["  Fire_Hydrant ", "- polka-dotted", "• cat's eye", '"sky"', "sky.", "café", "A  B  C  D  E", "123",
         "\u0000bad", "", "ok"], 100)
    assert words == ["fire hydrant", "polka-dotted", "cat's eye", "sky", "café", "ok"]
    assert dropped == 4  # five words, digits only, a control character, empty
    assert clean_words(["a", "b", "c"], 2) == (["a", "b"], 0)


def test_chat_completions_url_and_request_key():
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/openai/v1?api-version=1") == "https://h/openai/v1/chat/completions?api-version=1"
    body = {"model": "m", "messages": []}
    assert request_key("u", body, 5) == request_key("u", dict(body), 5)
    assert len({request_key("u", body, 5), request_key("u", body, 6), request_key("v", body, 5),
                request_key("u", {**body, "model": "n"}, 5)}) == 4


_BASE = {"data": {"shapes_world": {}}, "model": {"name": "shapesnet", "layers": ["conv4"]}}


def _clip_config(clip: dict):
    raw = copy.deepcopy(_BASE)
    raw["probe"] = {"clip": clip}
    return config_from_dict(raw)


def test_config_section_is_validated():
    cfg = _clip_config({"model": "neuronscan-tinyclip", "vocabulary": "llm",
                        "vocabulary_llm": {"url": "http://127.0.0.1:8000/v1", "model": "m", "api_key_env": "MY_KEY"}})
    llm = cfg.probe.clip.vocabulary_llm
    assert (llm.n_words, llm.timeout_s, llm.retries, llm.temperature) == (200, 60.0, 2, 0.0)
    assert llm.fallback == _llm.DEFAULT_BUILTIN and llm.cache_dir is None and llm.prompt is None
    with pytest.raises(ConfigError) as err:
        _clip_config({"vocabulary": "llm", "vocabulary_llm": {
            "url": "ftp://h/v1", "model": "", "api_key_env": "sk-abc", "timeout_s": 0, "retries": 9,
            "fallback": "builtin:nope", "extra": 1}})
    text = str(err.value)
    for key in ("url", "model", "api_key_env", "timeout_s", "retries", "fallback", "extra"):
        assert f"probe.clip.vocabulary_llm.{key}" in text
    with pytest.raises(ConfigError, match="must not carry credentials"):
        _clip_config({"vocabulary": "llm", "vocabulary_llm": {"url": "http://u:p@h/v1", "model": "m"}})
    with pytest.raises(ConfigError, match="vocabulary 'llm' needs vocabulary_llm"):
        _clip_config({"vocabulary": "llm"})
    with pytest.raises(ConfigError, match="vocabulary_llm is set but vocabulary is not 'llm'"):
        _clip_config({"vocabulary": "builtin:colours", "vocabulary_llm": {"url": "http://h/v1", "model": "m"}})


def test_resolve_vocabulary_with_a_configured_endpoint(serve, tmp_path):
    server = serve(lambda h: (200, _completion('["Red", "wheel"]')))
    cfg = _clip_config({"vocabulary": "llm", "vocabulary_llm": {
        "url": server.url, "model": "m", "cache_dir": str(tmp_path / "c"), "retries": 0}})
    assert resolve_vocabulary(cfg.probe.clip, ["circle"]) == ["red", "wheel"]
    assert resolve_vocabulary(SimpleNamespace(vocabulary="llm", vocabulary_llm=cfg.probe.clip.vocabulary_llm)) == [
        "red", "wheel"]
    assert len(server.requests) == 1  # the default prompt does not quote the concepts: the same request, cached


def test_the_config_dump_holds_no_key(monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    cfg = _clip_config({"vocabulary": "llm", "vocabulary_llm": {"url": "http://h/v1", "model": "m",
                                                                "api_key_env": "MY_KEY"}})
    assert KEY not in json.dumps(cfg.model_dump(mode="json"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURONSCAN_CACHE_DIR", str(tmp_path / "ns"))
    assert _llm.default_cache_dir() == tmp_path / "ns" / "vocabulary_llm"
    monkeypatch.delenv("NEURONSCAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _llm.default_cache_dir() == tmp_path / "xdg" / "neuronscan" / "vocabulary_llm"
