"""Random weights are the same in every process: each probe actor, and a resumed run, builds one model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from neuronscan.models import build_model

ROOT = Path(__file__).resolve().parents[2]
CODE = ("from neuronscan.models import build_model; from pipelines._fingerprint import state_sha256; "
        "print(state_sha256(build_model('resnet18', weights='random').module))")


def test_random_weights_are_reproducible_across_processes():
    from pipelines._fingerprint import state_sha256

    torch.manual_seed(99)  # whatever this process did with its RNG before
    here = state_sha256(build_model("resnet18", weights="random").module)
    there = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""}).stdout.strip()
    assert here == there and len(here) == 64


def test_building_a_model_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("resnet18", weights="random").module
    after = torch.rand(3)
    torch.testing.assert_close(after, expected)
    b = build_model("resnet18", weights="random").module
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
