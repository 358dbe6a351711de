"""Shared test setup: offline, quiet, and one local Ray per integration module."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
if not os.environ.get("NEURONSCAN_CACHE_DIR"):  # text-embedding cache entries go to a directory of this session
    import atexit
    import shutil
    import tempfile

    os.environ["NEURONSCAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="neuronscan-test-cache-")
    atexit.register(shutil.rmtree, os.environ["NEURONSCAN_CACHE_DIR"], ignore_errors=True)
