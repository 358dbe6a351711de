"""The describe section of the run config: defaults, and the mistakes refused before anything runs."""

from __future__ import annotations

import pytest

from neuronscan.config import config_from_dict
from neuronscan.errors import ConfigError

BASE = {"data": {"shapes_world": {"n_images": 20}}, "model": {"name": "tinycnn", "layers": ["conv2"]},
        "probe": {"topk": 4}}


def _cfg(describe: dict, probe: dict | None = None):
    return config_from_dict({**BASE, "probe": {**BASE["probe"], **(probe or {})}, "describe": describe})


def test_defaults_are_off_and_a_default_top_m_fits_any_topk():
    cfg = config_from_dict(BASE)
    assert cfg.describe.enabled is False and cfg.describe.top_m == 100 and cfg.describe.method == "zscore"
    assert cfg.describe.min_crop == 0.25 and cfg.describe.num_gpus == 0.0


@pytest.mark.parametrize(("describe", "probe", "key"), [
    ({"enabled": True, "model": "neuronscan-tinyclip", "top_m": 5}, None, "probe.topk"),
    ({"enabled": True}, None, "describe.model"),
    ({"pretrained": "openai"}, None, "describe.model"),
    ({"model": "ViT-B-32", "pretrained": "openai", "checkpoint": "x.pt"}, None, "not both"),
    ({"vocabulary": "llm"}, {"clip": {"model": "ViT-B-32"}}, "vocabulary_llm"),
    ({"min_crop": 0}, None, "describe.min_crop"),
    ({"method": "mean"}, None, "describe.method"),
])
def test_mistakes_are_refused(describe, probe, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(describe, probe)


def test_an_enabled_stage_takes_its_model_from_probe_clip_or_its_own():
    assert _cfg({"enabled": True}, {"clip": {"model": "ViT-B-32"}}).describe.model is None
    cfg = _cfg({"enabled": True, "model": "neuronscan-tinyclip", "top_m": 4, "layers": ["conv2:*"]})
    assert cfg.describe.top_m == 4 and cfg.describe.layers == ["conv2:*"]


def test_a_recorded_enabled_stage_with_the_default_top_m_loads_again():
    """run.json records every field: the default top_m (100) above probe.topk is cut by the stage, not refused."""
    cfg = _cfg({"enabled": True, "model": "neuronscan-tinyclip"})
    recorded = cfg.model_dump(mode="json")
    assert recorded["describe"]["top_m"] == 100 and recorded["probe"]["topk"] == 4
    assert config_from_dict(recorded).describe.top_m == 100
