"""An LLM-proposed concept vocabulary, from any OpenAI-compatible chat endpoint, cached on disk.

:func:`propose_vocabulary` sends one ``POST <url>/chat/completions`` request (the OpenAI chat
completions API, which vLLM, llama.cpp's server, Ollama, LiteLLM and hosted services all speak) asking
for ``n_words`` concept words as a JSON array, validates and cleans the words of the reply, and caches
them under ``cache_dir/<sha256 of the request>.json`` (written atomically), so the same request is
answered from disk from then on, with no network. When the endpoint cannot give a usable answer — it
is unreachable, answers an HTTP error, stalls past ``timeout_s``, or replies with junk (not JSON, the
wrong shape, no usable word) — the built-in ``fallback`` vocabulary is used and a warning says why.

The API key is read from the environment variable named by ``api_key_env`` and sent only as the
``Authorization: Bearer`` header: it is never logged, cached or put in an error message (every message
is passed through :func:`neuronscan.io.scrub` with the key as a secret), and the config holds only the
variable's name.

Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neuronscan.clip._builtin import DEFAULT_BUILTIN, builtin_vocabulary, is_builtin_spec
from neuronscan.io._redact import redact_uri, scrub

__all__ = [
    "DEFAULT_PROMPT",
    "CACHE_FORMAT",
    "MAX_WORD_CHARS",
    "MAX_WORD_TOKENS",
    "ProposedVocabulary",
    "chat_completions_url",
    "clean_words",
    "default_cache_dir",
    "propose_vocabulary",
    "request_key",
]

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "List {n_words} distinct visual concepts that single units of an image-recognition neural network "
    "might respond to: objects, object parts, scenes, materials, textures, colours and shapes. Each "
    "concept is one to three lower-case English words. Answer with a JSON array of strings and nothing else."
)
"""The user message when ``prompt`` is unset. ``{n_words}`` and ``{concepts}`` (the run's labelled
concepts, comma-separated, at most 200) are replaced in any prompt."""

_SYSTEM = "You propose concept vocabularies for labelling the units of vision models. You answer in JSON only."
CACHE_FORMAT = 1
MAX_WORD_CHARS = 40
"""Longest accepted concept, in characters."""
MAX_WORD_TOKENS = 4
"""Most words in one accepted concept."""
_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_MAX_CONCEPTS_IN_PROMPT = 200
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_BACKOFF_S = 0.5  # first retry's wait; doubled per retry, at most _MAX_BACKOFF_S
_MAX_BACKOFF_S = 8.0
_ALLOWED = re.compile(r"^[^\W_](?:[\w '&.-]*[^\W_])?$")  # letters/digits, inner spaces, - ' & .
_ENUMERATION = re.compile(r"^(?:\d+[.)]|[-*\u2022])\s+")


@dataclass(frozen=True)
class ProposedVocabulary:
    """The outcome of :func:`propose_vocabulary`.

    Attributes:
        words: the vocabulary, cleaned, at least one word.
        source: ``'llm'`` (the endpoint answered now), ``'cache'`` (an earlier answer to the same
            request) or ``'fallback'`` (the built-in vocabulary, because of ``reason``).
        reason: why the fallback was used; empty otherwise.
        cache_file: the cache entry read or written, if any.
        dropped: entries of the reply rejected by :func:`clean_words`.
    """

    words: list[str]
    source: str
    reason: str = ""
    cache_file: str | None = None
    dropped: int = 0


class _Unusable(Exception):
    """The endpoint gave no usable answer; the message says why (already scrubbed)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


def _get(settings: Any, key: str, default: Any = None) -> Any:
    if isinstance(settings, Mapping):
        return settings.get(key, default)
    return getattr(settings, key, default)


def chat_completions_url(url: str) -> str:
    """The request URL for ``url``: used as is when it ends in ``/chat/completions``, else with
    ``/chat/completions`` appended to a base ending in ``/v1`` (or ``/v1/chat/completions`` to a bare host).

    Example:
        >>> chat_completions_url("http://127.0.0.1:8000/v1")
        'http://127.0.0.1:8000/v1/chat/completions'
        >>> chat_completions_url("http://127.0.0.1:8000")
        'http://127.0.0.1:8000/v1/chat/completions'
    """
    base = url.strip()
    query = ""
    if "?" in base:
        base, query = base.split("?", 1)
        query = "?" + query
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base + query
    if re.search(r"/v\d+[a-z]*$", base) is None and base.count("/") <= 2:
        base += "/v1"
    return base + "/chat/completions" + query


def default_cache_dir() -> Path:
    """``$NEURONSCAN_CACHE_DIR/vocabulary_llm``, else ``$XDG_CACHE_HOME/neuronscan/vocabulary_llm``, else
    ``~/.cache/neuronscan/vocabulary_llm`` (as the text-embedding cache chooses its folder)."""
    if os.environ.get("NEURONSCAN_CACHE_DIR"):
        return Path(os.environ["NEURONSCAN_CACHE_DIR"]) / "vocabulary_llm"
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "neuronscan" / "vocabulary_llm"


def _prompt(template: str | None, n_words: int, concepts: Sequence[str]) -> str:
    text = DEFAULT_PROMPT if template is None else template
    quoted = ", ".join(list(concepts)[:_MAX_CONCEPTS_IN_PROMPT])
    return text.replace("{n_words}", str(n_words)).replace("{concepts}", quoted)


def _request_body(settings: Any, concepts: Sequence[str]) -> dict[str, Any]:
    prompt = _prompt(_get(settings, "prompt"), int(_get(settings, "n_words", 200)), concepts)
    return {
        "model": str(_get(settings, "model")),
        "messages": [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": prompt},
        ],
        "temperature": float(_get(settings, "temperature", 0.0)),
    }


def request_key(endpoint: str, body: Mapping[str, Any], n_words: int) -> str:
    """SHA-256 (hex) of the request: endpoint URL, JSON body and ``n_words``, never the API key."""
    canonical = json.dumps({"endpoint": endpoint, "body": body, "n_words": n_words}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def clean_words(entries: Sequence[Any], n_words: int) -> tuple[list[str], int]:
    """Validate and clean an LLM's words: at most ``n_words`` distinct concepts, and how many were dropped.

    Each string is NFKC-normalised, lower-cased, stripped of list markers (``1.``, ``-``, ``•``),
    quotes and trailing punctuation, and its whitespace collapsed (``_`` counts as a space). It is
    kept when it is 1..:data:`MAX_WORD_CHARS` characters of at most :data:`MAX_WORD_TOKENS` words,
    made of letters and digits with inner spaces, hyphens, apostrophes, ``&`` or ``.``, and holds a
    letter. Non-strings, rejects and repeats are dropped (repeats are not counted).

    Example:
        >>> clean_words(["Red", " 2. striped texture ", "red", 7, "x" * 80, "<script>", "fire_hydrant"], 10)
        (['red', 'striped texture', 'fire hydrant'], 3)
    """
    seen: dict[str, None] = {}
    dropped = 0
    for entry in entries:
        if not isinstance(entry, str):
            dropped += 1
            continue
        word = unicodedata.normalize("NFKC", entry).replace("_", " ")
        word = " ".join(word.split()).strip()
        word = _ENUMERATION.sub("", word)
        word = word.strip("\"'`“”‘’ ").rstrip(".,;:!?").strip().lower()
        ok = (0 < len(word) <= MAX_WORD_CHARS and len(word.split()) <= MAX_WORD_TOKENS
              and _ALLOWED.match(word) is not None and any(ch.isalpha() for ch in word))
        if not ok:
            dropped += 1
            continue
        seen.setdefault(word, None)
    return list(seen)[:n_words], dropped


def _reply_words(payload: bytes) -> list[Any]:
    """The list of entries in a chat-completions response body, or :class:`_Unusable`."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Unusable("the response is not JSON") from None
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Unusable("the response has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise _Unusable(f"choices[0].message.content is {type(content).__name__}, not text")
    text = content.strip()
    fenced = re.fullmatch(r"```[A-Za-z]*\s*(.*?)\s*```", text, flags=re.S)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("["), text.rfind("]")
        try:
            value = json.loads(text[start:end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            value = None
        if value is None:
            raise _Unusable("the reply is not a JSON array of words") from None
    if isinstance(value, dict):  # {"words": [...]} or {"concepts": [...]}
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else None
    if not isinstance(value, list):
        raise _Unusable("the reply is not a JSON array of words")
    return value


def _post(endpoint: str, data: bytes, headers: dict[str, str], timeout_s: float, secrets: list[str]) -> bytes:
    """One POST with a hard deadline of ``timeout_s`` for connecting, waiting and reading."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http/https only)
                chunks, size = [], 0
                while True:
                    chunk = response.read1(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > _MAX_RESPONSE_BYTES:
                        raise _Unusable(f"the response is larger than {_MAX_RESPONSE_BYTES // 2**20} MiB")
                    chunks.append(chunk)
                result["body"] = b"".join(chunks)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=work, name="neuronscan-vocabulary-llm", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():  # the worker ends at its own socket timeout; its result is ignored
        raise _Unusable(f"no complete answer within timeout_s={timeout_s:g} s", retry=True)
    error = result.get("error")
    if error is None:
        return result["body"]
    if isinstance(error, _Unusable):
        raise error
    if isinstance(error, urllib.error.HTTPError):
        detail = ""
        try:
            detail = error.read(300).decode("utf-8", "replace").strip()
        except Exception:  # the error body is a courtesy
            pass
        message = f"HTTP {error.code} {error.reason}" + (f": {detail}" if detail else "")
        raise _Unusable(scrub(message, secrets), retry=error.code in _RETRY_STATUS) from None
    if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
        raise _Unusable(f"no complete answer within timeout_s={timeout_s:g} s", retry=True) from None
    if isinstance(error, (urllib.error.URLError, OSError, ValueError)) or \
            type(error).__module__ == "http.client":
        reason = getattr(error, "reason", None) or error
        raise _Unusable(scrub(f"unreachable ({type(error).__name__}: {reason})", secrets), retry=True) from None
    raise error


def _read_cache(path: Path, n_words: int) -> list[str] | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning(f"vocabulary_llm: ignoring unreadable cache entry {path} ({type(exc).__name__})")
        return None
    words = entry.get("words") if isinstance(entry, dict) else None
    if not isinstance(words, list):
        logger.warning(f"vocabulary_llm: ignoring cache entry {path} without a word list")
        return None
    cleaned, _ = clean_words(words, n_words)
    if not cleaned:
        logger.warning(f"vocabulary_llm: ignoring cache entry {path} with no usable word")
        return None
    return cleaned


def _write_cache(path: Path, entry: dict[str, Any]) -> bool:
    """Write ``entry`` as ``path`` atomically (a temporary file in the same folder, then a rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".partial")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, indent=1, ensure_ascii=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning(f"vocabulary_llm: could not write the cache entry {path} ({type(exc).__name__}: {exc}); "
                       "the next run will ask the endpoint again")
        return False
    return True


def _fallback(settings: Any, reason: str, dropped: int = 0) -> ProposedVocabulary:
    spec = _get(settings, "fallback") or DEFAULT_BUILTIN
    if is_builtin_spec(spec):
        words = builtin_vocabulary(spec)
    else:
        from neuronscan.clip._vocab import load_vocabulary

        words = load_vocabulary(spec)
    logger.warning(f"vocabulary_llm: {reason}; using the vocabulary {spec} ({len(words)} words) instead")
    return ProposedVocabulary(words=words, source="fallback", reason=reason, dropped=dropped)


def propose_vocabulary(settings: Any, *, concepts: Sequence[str] = ()) -> ProposedVocabulary:
    """Ask an OpenAI-compatible chat endpoint for a concept vocabulary, with a cache and a fallback.

    Args:
        settings: ``clip.vocabulary_llm`` (a :class:`~neuronscan.config.VocabularyLLMSection`, or a
            mapping/object with the same keys): ``url``, ``model``, ``api_key_env``, ``n_words``,
            ``timeout_s``, ``retries``, ``cache_dir``, ``prompt``, ``temperature``, ``fallback``.
        concepts: the run's labelled concepts, quoted where the prompt says ``{concepts}``.

    Returns:
        The words and where they came from. Never raises for a failing endpoint: the built-in
        fallback is returned, with a warning naming the reason.

    Raises:
        ValueError: the fallback itself is unknown (a bad ``builtin:`` name or a missing file).
    """
    url = str(_get(settings, "url"))
    n_words = int(_get(settings, "n_words", 200))
    timeout_s = float(_get(settings, "timeout_s", 60.0))
    retries = int(_get(settings, "retries", 2))
    endpoint = chat_completions_url(url)
    shown = redact_uri(endpoint)
    body = _request_body(settings, concepts)
    key = request_key(endpoint, body, n_words)
    cache_dir = _get(settings, "cache_dir")
    cache_path = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / f"{key}.json"

    cached = _read_cache(cache_path, n_words)
    if cached is not None:
        logger.info(f"vocabulary_llm: {len(cached)} words from the cache ({cache_path})")
        return ProposedVocabulary(words=cached, source="cache", cache_file=str(cache_path))

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    secrets: list[str] = []
    env_name = _get(settings, "api_key_env")
    if env_name:
        api_key = os.environ.get(str(env_name), "")
        if not api_key.strip():
            return _fallback(settings, f"the API key variable {env_name} is not set")
        headers["Authorization"] = f"Bearer {api_key.strip()}"
        secrets.append(api_key.strip())
    data = json.dumps(body).encode("utf-8")

    attempts = 1 + max(0, retries)
    for attempt in range(attempts):
        try:
            payload = _post(endpoint, data, headers, timeout_s, secrets)
            entries = _reply_words(payload)
            words, dropped = clean_words(entries, n_words)
            if not words:
                raise _Unusable(f"the reply holds no usable word ({len(entries)} entries, all rejected)")
        except _Unusable as exc:
            reason = f"{shown}: {exc}"
            if exc.retry and attempt + 1 < attempts:
                wait = min(_BACKOFF_S * 2**attempt, _MAX_BACKOFF_S)
                logger.warning(f"vocabulary_llm: {reason}; retrying in {wait:g} s "
                               f"(attempt {attempt + 2} of {attempts})")
                time.sleep(wait)
                continue
            tried = f" after {attempts} attempts" if attempts > 1 and exc.retry else ""
            return _fallback(settings, reason + tried)
        if dropped:
            logger.warning(f"vocabulary_llm: {dropped} entries of the reply were not usable concepts and were dropped")
        entry = {
            "format": CACHE_FORMAT,
            "request_sha256": key,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "endpoint": shown,
            "model": body["model"],
            "n_words": n_words,
            "request": body,
            "words": words,
            "dropped": dropped,
        }
        written = _write_cache(cache_path, entry)
        logger.info(f"vocabulary_llm: {len(words)} words from {shown} ({body['model']})")
        return ProposedVocabulary(words=words, source="llm", cache_file=str(cache_path) if written else None,
                                  dropped=dropped)
    raise AssertionError("unreachable")  # pragma: no cover
