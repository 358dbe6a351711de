"""Score workers keep freed memory for their next shard (glibc's mallopt), once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_a_repeated_allocation():
    # In a child: the setting is per process, and this test process must keep its own allocator.
    code = """
import resource, numpy as np
from pipelines._ray import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB: above glibc's largest dynamic mmap threshold
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
plain = faults()
assert keep_freed_memory() is True and keep_freed_memory() is True
faults()  # the first allocation after the setting still faults its pages in once
kept = faults()
print(plain, kept)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain, kept = map(int, out.stdout.split())
    assert plain > 1000 and kept < plain / 10, (plain, kept)
