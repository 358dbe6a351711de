"""`neuronscan sanity` as a user runs it: the table, the JSON, and clear errors."""

from __future__ import annotations

import json

from .test_cli import assert_clean_error, ns


def test_sanity_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "sanity.json"
    proc = ns("sanity", "--n-images", 20000, "--seeds", 6, "--frequencies", "0.3,0.001", "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()}
    assert rows["auc"].split()[1] == "FAIL" and "pass" in rows["correlation"] and "(control)" in rows["recall"]
    result = json.loads(out.read_text())
    assert result["passed"]["correlation"] == {"missing": True, "extra": True}
    assert result["passed"]["auc"]["missing"] is False
    assert result["frequencies"] == [0.3, 0.001] and result["n_seeds"] == 6


def test_sanity_refuses_bad_settings_clearly():
    assert_clean_error(ns("sanity", "--frequencies", "0.1,abc"), "--frequencies")
    assert_clean_error(ns("sanity", "--n-images", 100, "--frequencies", "0.001"), "positives")
    proc = ns("sanity", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout
