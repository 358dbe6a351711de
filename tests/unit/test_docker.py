"""The container images (docker/) agree with pyproject.toml: Ray and Python of the base image, every pinned
version the Dockerfiles install, and the files they copy. Static checks: no image is built here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))


def _pins() -> dict[str, str]:
    """``name -> version`` for every ``==`` pin of pyproject.toml's dependencies (extras dropped)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;,]+)", spec.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    major, minor = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    pins["python"] = f"{major}.{minor}"
    return pins


def dockerfile_problems(text: str, pins: dict[str, str], repo: Path = REPO) -> list[str]:
    """Every disagreement of one Dockerfile's text with the project's pins and files."""
    problems = []
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
    if len(froms) != 1:
        return [f"expected one FROM line, found {len(froms)}"]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), froms[0])
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cpu|gpu|cu\d+)", image)
    if not m:
        return [f"base image {image!r} is not an official rayproject/ray:<version>-py<XY>-<cpu|gpu|cuXY> tag"]
    if m.group(1) != pins["ray"]:
        problems.append(f"base image has Ray {m.group(1)}, pyproject.toml pins ray=={pins['ray']}")
    if f"{m.group(2)}.{m.group(3)}" != pins["python"]:
        problems.append(f"base image has Python {m.group(2)}.{m.group(3)}, pyproject.toml requires {pins['python']}")
    for name, version in re.findall(r"(?<![\w-])([A-Za-z][\w.-]*)==([\w.+-]+)", text):
        key = name.lower().replace("_", "-")
        if key not in pins:
            problems.append(f"{name}=={version} is pinned here but not in pyproject.toml")
        elif pins[key] != version:
            problems.append(f"{name}=={version} here, {pins[key]} in pyproject.toml")
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M):
        for item in source.split():
            if not (repo / item).exists():
                problems.append(f"COPY {item}: no such file in the repository")
    if not re.search(r"pip install [^\n]*\s\.(\s|$)", text):
        problems.append("the project itself is not installed (pip install .)")
    return problems


def test_there_are_cpu_and_cuda_images():
    names = [p.name for p in DOCKERFILES]
    assert names == ["Dockerfile", "Dockerfile.cuda"]
    assert "-cpu" in (REPO / "docker" / "Dockerfile").read_text()
    assert "-gpu" in (REPO / "docker" / "Dockerfile.cuda").read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_agrees_with_pyproject(path):
    assert dockerfile_problems(path.read_text(), _pins()) == []


def test_the_check_catches_disagreements():
    text = (REPO / "docker" / "Dockerfile").read_text()
    pins = _pins()
    wrong = (text.replace("RAY_VERSION=2.60.0", "RAY_VERSION=2.59.0").replace("py311", "py310")
             .replace("torch==2.14.1", "torch==2.13.0").replace("COPY --chown=ray:users configs/", "COPY nothere/"))
    problems = dockerfile_problems(wrong, pins)
    assert any("Ray 2.59.0" in p for p in problems)
    assert any("Python 3.10" in p for p in problems)
    assert any("torch==2.13.0" in p for p in problems)
    assert any("nothere/" in p for p in problems)
    assert dockerfile_problems("FROM python:3.11\n", pins)[0].startswith("base image")


def test_image_name_matches_the_manifests():
    kustomization = (REPO / "k8s" / "base" / "kustomization.yaml").read_text()
    assert re.search(r"- name: neuronscan\n\s+newName: \S+", kustomization), "k8s/base sets the neuronscan image"
    readme = (REPO / "k8s" / "README.md").read_text()
    assert "docker build -f docker/Dockerfile" in readme and "kustomize edit set image neuronscan=" in readme
