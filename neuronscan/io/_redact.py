"""Credentials never reach an output: URIs lose their userinfo, texts lose any secret they echo.

A URI such as ``s3://KEY:SECRET@bucket/a.jpg`` or ``http://user:pw@host/a.jpg`` is stored and shown as
``s3://***@bucket/a.jpg`` / ``http://***@host/a.jpg``, and an http(s) query string (a presigned URL's
signature) as ``?<redacted>``; the run keeps the full URI only in memory, to read the image. Error
texts from libraries may quote a credential without its URI (botocore names the bucket
``KEY:SECRET@bucket``), so `scrub` also replaces every secret it is given and the values of credential
environment variables (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*_PASSWORD``, …) with ``***``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

__all__ = ["redact_uri", "scrub", "scrub_obj", "uri_secrets", "env_secrets"]

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#\"'<>]*@)")
_HTTP_QUERY = re.compile(r"(?P<head>\bhttps?://[^\s?#\"'<>]*)\?(?!<redacted>)[^\s#\"'<>]*")
_SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY)", re.I)
_MIN_SECRET = 4  # shorter values ("x", "ab") would blank ordinary text
_MIN_ENV_SECRET = 8  # real keys and tokens are 20+ characters; "testing" or "minio" are placeholders


def redact_uri(uri: str) -> str:
    """``uri`` without credentials: ``s3://KEY:SECRET@bucket/k`` → ``s3://***@bucket/k``, and for http(s)
    the (possibly signed) query string → ``?<redacted>``. In a longer text every URI is redacted."""
    if not isinstance(uri, str):
        return uri
    if "@" in uri:
        uri = _USERINFO.sub(lambda m: m.group("scheme") + "***@", uri)
    if "?" in uri and "http" in uri:
        uri = _HTTP_QUERY.sub(lambda m: m.group("head") + "?<redacted>", uri)
    return uri


def uri_secrets(uris: Iterable[str]) -> set[str]:
    """The credentials in the userinfo of ``uris`` (the whole userinfo, its user and password, decoded too)."""
    out: set[str] = set()
    for uri in uris:
        if not isinstance(uri, str) or "@" not in uri:
            continue
        for m in _USERINFO.finditer(uri):
            info = m.group("userinfo")[:-1]
            for piece in (info, *info.split(":", 1)):
                for value in (piece, unquote(piece)):
                    if len(value) >= _MIN_SECRET:
                        out.add(value)
    return out


def env_secrets(environ: dict[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names say they hold a credential."""
    env = os.environ if environ is None else environ
    return {v for k, v in env.items()
            if _SECRET_ENV.search(k) and isinstance(v, str) and len(v) >= _MIN_ENV_SECRET}


def _ordered(secrets: Iterable[str], env: bool) -> list[str]:
    every = set(secrets) | (env_secrets() if env else set())
    return sorted(every, key=len, reverse=True)  # longest first: KEY:SECRET, then KEY


def _scrub(text: str, ordered: list[str]) -> str:
    text = redact_uri(text)
    for secret in ordered:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def scrub(text: Any, secrets: Iterable[str] = (), *, env: bool = True) -> str:
    """``text`` with userinfo removed from its URIs and every secret (given, or, with ``env``, the values of
    credential environment variables) replaced by ``***``."""
    return _scrub(str(text), _ordered(secrets, env))


def scrub_obj(obj: Any, secrets: Iterable[str] = (), *, env: bool = True) -> Any:
    """`scrub` applied to every string (values and keys) in a JSON-like object of dicts, lists and strings."""
    ordered = _ordered(secrets, env)

    def walk(o: Any) -> Any:
        if isinstance(o, str):
            return _scrub(o, ordered)
        if isinstance(o, dict):
            return {(_scrub(k, ordered) if isinstance(k, str) else k): walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o

    return walk(obj)
