"""URIs lose their credentials; texts lose any secret they echo (botocore quotes a bucket as KEY:SECRET@bucket)."""

from __future__ import annotations

import pytest

from neuronscan.io import redact_uri, scrub, scrub_obj, uri_secrets


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://KEY:SECRET@bucket/a.jpg", "s3://***@bucket/a.jpg"),
        ("http://user:p%40ss@host:8080/x.png", "http://***@host:8080/x.png"),
        ("https://host/a.jpg?X-Amz-Signature=abc&X-Amz-Credential=k", "https://host/a.jpg?<redacted>"),
        ("s3://bucket/plain.jpg", "s3://bucket/plain.jpg"),
        ("/data/me@home/a.jpg", "/data/me@home/a.jpg"),  # a local path with @ is no userinfo
        ("see s3://A:B@b/k and http://u:v@h/k?t=1", "see s3://***@b/k and http://***@h/k?<redacted>"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
    assert redact_uri(shown) == shown  # idempotent


def test_scrub_removes_secrets_quoted_without_their_uri(monkeypatch):
    uri = "s3://AKIA0123:s3cr3tvalue@bucket/a.jpg"
    botocore = 'Parameter validation failed: Invalid bucket name "AKIA0123:s3cr3tvalue@bucket"'
    assert "s3cr3tvalue" not in scrub(botocore, uri_secrets([uri])) and "AKIA0123" not in scrub(botocore,
                                                                                                  uri_secrets([uri]))
    assert "p@ss" not in scrub("auth failed for p@ss", uri_secrets(["http://u:p%40ss@h/x"]))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecretvalue123")
    monkeypatch.setenv("MY_API_TOKEN", "tok-0987654321")
    monkeypatch.setenv("HOME_DIR_NAME", "not-a-secret-value")
    text = scrub("signature mismatch for envsecretvalue123 / tok-0987654321 in not-a-secret-value")
    assert text == "signature mismatch for *** / *** in not-a-secret-value"
    assert scrub("envsecretvalue123", env=False) == "envsecretvalue123"


def test_scrub_obj_walks_json():
    obj = {"data": {"manifest": "s3://K:S@b/m.parquet"}, "list": ["http://u:pw@h/x"], "n": 3}
    assert scrub_obj(obj, env=False) == {"data": {"manifest": "s3://***@b/m.parquet"}, "list": ["http://***@h/x"],
                                         "n": 3}
