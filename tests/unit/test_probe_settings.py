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
        ({"decode_tasks": 1, "num_gpus": 1}, 1),  # a GPU stage never fuses: the cap stays as set
        ({"decode_tasks": 1, "decode_cpus": 1, "cpus_per_actor": 2}, 1),  # different CPU requests never fuse
    ],
)
def test_decode_concurrency(probe, expected):
    pcfg = _probe(**probe)
    assert decode_concurrency(pcfg) == expected


def test_actor_threads_and_decode_tasks_are_validated():
    with pytest.raises(Exception, match="actor_threads"):
        _probe(actor_threads=0)
    with pytest.raises(Exception, match="decode_tasks"):
        _probe(decode_tasks=0)


def test_compositional_settings_that_cannot_work_are_refused():
    def comp(**kw):
        return config_from_dict({"data": {"folder": "x"}, "model": {"name": "tinycnn", "layers": ["conv1"]},
                                 "score": {"compositional": kw}}).score.compositional

    assert comp(n_candidates=128).n_candidates == 128
    assert comp(search="beam", n_candidates=1000).n_candidates == 1000
    with pytest.raises(Exception, match="n_candidates <= 128"):
        comp(n_candidates=129)
    with pytest.raises(Exception, match="min_fraction"):
        comp(min_fraction=0.6, max_fraction=0.5)
    with pytest.raises(Exception, match="max_length <= 3"):
        comp(max_length=4)
    assert comp(search="beam", max_length=4).max_length == 4
