"""Probe settings that are plain functions of the config (no Ray needed)."""

from __future__ import annotations

import pytest

from neuronscan.config import config_from_dict
from pipelines.probe import decode_concurrency


def _probe(**probe):
    return config_from_dict({"data": {"folder": "x"}, "model": {"name": "tinycnn", "layers": ["conv1"]},
                             "probe": probe}).probe


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        ({}, None),  # no cap: Ray Data fuses decode into CPU actors and spreads it over free CPUs on GPU nodes
        ({"decode_tasks": 5}, 5),
        ({"decode_tasks": 2, "num_actors": 2}, 3),  # a cap equal to the actor count would fuse: one more
        ({"decode_tasks": 1}, 2),
    ],
)
def test_decode_concurrency(probe, expected):
    pcfg = _probe(**probe)
    assert decode_concurrency(pcfg) == expected
    assert decode_concurrency(pcfg) != pcfg.num_actors


def test_actor_threads_and_decode_tasks_are_validated():
    with pytest.raises(Exception, match="actor_threads"):
        _probe(actor_threads=0)
    with pytest.raises(Exception, match="decode_tasks"):
        _probe(decode_tasks=0)
