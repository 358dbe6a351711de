"""Static checks of the container images (docker/) against pyproject.toml and the repository.

No image is built here: each Dockerfile is parsed, and the Ray and Python versions of its base image,
every version it pins, and the files it copies must agree with pyproject.toml, the repository and
.dockerignore. The check is one function, ``dockerfile_problems``, which is also run on deliberately
wrong Dockerfiles, so a disagreement is known to fail the test rather than pass unnoticed.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
# Dockerfile -> the platform part of its rayproject/ray base tag.
IMAGES = {"Dockerfile": ("cpu",), "Dockerfile.cuda": ("gpu", "cu")}
BASE_IMAGE = re.compile(
    r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)-(?P<platform>cpu|gpu|cu\d+)"
)
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==\S+")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Installed explicitly before the project, so that `pip install .` keeps the image's own build of them.
TORCH_PACKAGES = ("torch", "torchvision")


# ---------------------------------------------------------------------------------------------
# The project's side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    requirements: dict[str, Requirement]  # canonical name -> requirement of [project].dependencies
    requires_python: SpecifierSet
    python: str  # the Python the project is built for: ruff's target-version, "py311" -> "3.11"
    needed: tuple[str, ...]  # what `pip install .` reads: pyproject.toml, the readme, the packages


def load_project(path: Path = REPO / "pyproject.toml") -> Project:
    data = tomllib.loads(path.read_text())
    project = data["project"]
    requirements = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    target = re.fullmatch(r"py(\d)(\d+)", data["tool"]["ruff"]["target-version"])
    assert target, "pyproject.toml: tool.ruff.target-version is not pyXY"
    packages = data["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = sorted({p.split(".")[0].rstrip("*") for p in packages})
    return Project(
        requirements=requirements,
        requires_python=SpecifierSet(project["requires-python"]),
        python=f"{target.group(1)}.{target.group(2)}",
        needed=("pyproject.toml", project["readme"], *tops),
    )


def _exact_pin(project: Project, name: str) -> str | None:
    specs = list(project.requirements[name].specifier) if name in project.requirements else []
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


# ---------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------


def dockerignore_patterns(text: str) -> list[str]:
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            body = line[1:].strip() if negate else line
            patterns.append(("!" if negate else "") + body.strip("/"))
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go's filepath.Match plus `**`), anchored at the context root."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def is_ignored(rel: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out `rel` (a path under the root): it, or a folder above it, matches."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negate else pattern)
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), "the repository root needs a .dockerignore (the build context is the root)"
    return dockerignore_patterns(path.read_text())


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # a comment, also inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1]
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        current = ""
    if current.strip():
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _args(value: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for token in shlex.split(value):
        name, eq, default = token.partition("=")
        out[name] = default if eq else None
    return out


def _substitute(value: str, args: dict[str, str | None]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return args[name] if args.get(name) is not None else m.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def dockerfile_problems(text: str, project: Project, repo: Path = REPO, ignore: list[str] | None = None) -> list[str]:
    """Everything in one Dockerfile's text that disagrees with the project, the repository or .dockerignore."""
    ignore = _dockerignore() if ignore is None else ignore
    instructions = parse_dockerfile(text)
    froms = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    if len(froms) != 1:
        return [f"expected one FROM (one stage), found {len(froms)}"]
    problems = []

    # Versions: ARGs at the top, before FROM, are the build's defaults.
    top: dict[str, str | None] = {}
    for kw, rest in instructions[: froms[0]]:
        if kw != "ARG":
            problems.append(f"{kw} before FROM: only ARG belongs there")
        else:
            top.update(_args(rest))
    for name in ("RAY_VERSION", "PYTHON_VERSION"):
        if not top.get(name):
            problems.append(f"ARG {name}=... with a default is missing at the top of the file")
    stage: dict[str, str | None] = {}
    for kw, rest in instructions[froms[0] + 1 :]:
        if kw == "ARG":
            for name, default in _args(rest).items():
                stage[name] = default if default is not None else top.get(name)

    # The base image: official Ray, at pyproject's Ray and the project's Python.
    words = [w for w in instructions[froms[0]][1].split() if not w.startswith("--")]
    image = _substitute(words[0], top) if words else ""
    base = BASE_IMAGE.fullmatch(image)
    if not base:
        return [*problems, f"base image {image!r} is not an official rayproject/ray:<x.y.z>-py<XY>-<cpu|gpu|cuXYZ> tag"]
    ray_pin = _exact_pin(project, "ray")
    if base["ray"] != ray_pin:
        problems.append(f"base image {image} has Ray {base['ray']}, pyproject.toml pins ray=={ray_pin}")
    if top.get("RAY_VERSION") and top["RAY_VERSION"] != ray_pin:
        problems.append(f"ARG RAY_VERSION={top['RAY_VERSION']}, pyproject.toml pins ray=={ray_pin}")
    python = f"{base['major']}.{base['minor']}"
    if python != project.python or python not in project.requires_python:
        problems.append(
            f"base image {image} has Python {python}; the project is built for Python {project.python} "
            f"(requires-python {project.requires_python})"
        )
    if top.get("PYTHON_VERSION") and top["PYTHON_VERSION"] != python:
        problems.append(f"ARG PYTHON_VERSION={top['PYTHON_VERSION']} but the base image has Python {python}")

    # Every explicit pin of a RUN, and torch/torchvision before the project.
    pinned: dict[str, int] = {}
    install_project = None
    for index, (kw, rest) in enumerate(instructions):
        if kw != "RUN":
            continue
        tokens = _tokens(_substitute(rest, stage))
        for token in tokens:
            if not PIN.fullmatch(token):
                continue
            if "$" in token:
                problems.append(f"{token}: an ARG that the stage does not declare after FROM (empty in RUN)")
                continue
            requirement = Requirement(token)
            name, (spec,) = canonicalize_name(requirement.name), list(requirement.specifier)
            pinned.setdefault(name, index)
            if name not in project.requirements:
                problems.append(f"{token} is pinned here but is not a dependency in pyproject.toml")
            elif not project.requirements[name].specifier.contains(spec.version, prereleases=True):
                problems.append(f"{token} here, pyproject.toml asks for {project.requirements[name]}")
        if "install" in tokens and "." in tokens and any(t == "pip" or t.endswith("/pip") for t in tokens):
            install_project = index
    if install_project is None:
        problems.append("the project itself is never installed (RUN pip install --no-cache-dir .)")
    for name in TORCH_PACKAGES:
        if name not in pinned or (install_project is not None and pinned[name] > install_project):
            problems.append(f"{name} is not pinned in a RUN before `pip install .`")

    # COPY: sources exist, are in the build context, and hold all that `pip install .` reads.
    copied = set()
    for index, (kw, rest) in enumerate(instructions):
        if kw not in ("COPY", "ADD"):
            continue
        tokens = _tokens(rest)
        if any(t.startswith("--from") for t in tokens):
            continue
        sources = [t for t in tokens if not t.startswith("--")][:-1]
        if install_project is not None and index > install_project:
            problems.append(f"{kw} {' '.join(sources)} comes after `pip install .`")
        for source in sources:
            rel = source.strip("/") or "."
            copied.add(rel)
            path = repo / rel
            if not path.exists():
                problems.append(f"{kw} {source}: no such file or folder in the repository")
            elif is_ignored(rel, ignore):
                problems.append(f"{kw} {source}: .dockerignore leaves it out of the build context")
            elif path.is_dir():
                lost = [
                    p.relative_to(repo).as_posix()
                    for p in sorted(path.rglob("*"))
                    if p.is_file()
                    and "__pycache__" not in p.parts
                    and p.suffix != ".pyc"
                    and is_ignored(p.relative_to(repo).as_posix(), ignore)
                ]
                if lost:
                    problems.append(f"{kw} {source}: .dockerignore leaves out {lost[:5]}")
    missing = [n for n in project.needed if n not in copied]
    if missing:
        problems.append(f"`pip install .` needs {missing}, which no COPY brings in")
    return problems


def _dockerfile(name: str) -> str:
    path = DOCKER / name
    assert path.is_file(), f"docker/{name} is missing"
    return path.read_text()


def _base(name: str) -> re.Match:
    text = _dockerfile(name)
    instructions = parse_dockerfile(text)
    top: dict[str, str | None] = {}
    for kw, rest in instructions:
        if kw == "FROM":
            base = BASE_IMAGE.fullmatch(_substitute(rest.split()[0], top))
            assert base, f"docker/{name}: base image is not rayproject/ray"
            return base
        top.update(_args(rest))
    raise AssertionError(f"docker/{name} has no FROM")


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_there_is_a_cpu_and_a_cuda_image():
    assert sorted(p.name for p in DOCKER.glob("Dockerfile*")) == sorted(IMAGES)
    for name, platforms in IMAGES.items():
        platform = _base(name)["platform"]
        assert platform.startswith(platforms), f"docker/{name}: base platform -{platform}, want -{platforms}"
    cpu, cuda = _dockerfile("Dockerfile"), _dockerfile("Dockerfile.cuda")
    assert f"--index-url {CPU_TORCH_INDEX}" in cpu, "the CPU image installs PyTorch's CPU wheels"
    assert CPU_TORCH_INDEX not in cuda, "the CUDA image installs a CUDA build of torch"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_agrees_with_pyproject(name):
    problems = dockerfile_problems(_dockerfile(name), load_project())
    assert not problems, f"docker/{name}:\n" + "\n".join(problems)


WRONG = [
    ("ray", lambda t: t.replace("RAY_VERSION=2.60.0", "RAY_VERSION=2.59.0"), "Ray 2.59.0"),
    ("python-tag", lambda t: t.replace("PYTHON_TAG=py311", "PYTHON_TAG=py312"), "Python 3.12"),
    ("python-arg", lambda t: t.replace("PYTHON_VERSION=3.11", "PYTHON_VERSION=3.12"), "ARG PYTHON_VERSION=3.12"),
    ("no-version-args", lambda t: re.sub(r"(?m)^ARG PYTHON_VERSION=.*\n", "", t), "ARG PYTHON_VERSION=... "),
    ("torch", lambda t: t.replace("TORCH_VERSION=2.14.1", "TORCH_VERSION=2.13.0"), "torch==2.13.0"),
    ("literal-pin", lambda t: t.replace("torch==${TORCH_VERSION}", "torch==2.13.0"), "torch==2.13.0"),
    ("stray-pin", lambda t: t.replace("torchvision==", "timm==1.0.0 torchvision=="), "timm==1.0.0"),
    ("unpinned-torch", lambda t: t.replace("torch==${TORCH_VERSION}", "torch"), "torch is not pinned"),
    (
        "missing-copy",
        lambda t: t.replace("COPY --chown=ray:users configs/ configs/", "COPY nothere/ nothere/"),
        "nothere/",
    ),
    ("no-package", lambda t: t.replace("COPY --chown=ray:users pipelines/ pipelines/\n", ""), "['pipelines']"),
    ("no-install", lambda t: t.replace("pip install --no-cache-dir . ", "pip check "), "never installed"),
    ("other-base", lambda t: re.sub(r"(?m)^FROM .*$", "FROM python:3.11-slim", t), "not an official"),
    ("two-stages", lambda t: t + "\nFROM rayproject/ray:2.60.0-py311-cpu\n", "one FROM"),
    ("arg-not-in-stage", lambda t: re.sub(r"(?m)^ARG TORCH_VERSION\n", "", t), "does not declare"),
]


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("mutate, expected", [pytest.param(m, e, id=i) for i, m, e in WRONG])
def test_the_check_fails_a_dockerfile_that_disagrees(name, mutate, expected):
    text = _dockerfile(name)
    wrong = mutate(text)
    assert wrong != text, "the mutation no longer applies to this Dockerfile; update WRONG"
    problems = dockerfile_problems(wrong, load_project())
    assert any(expected in p for p in problems), f"expected a problem mentioning {expected!r}, got {problems}"


def test_the_check_fails_a_copy_that_dockerignore_drops():
    text, project = _dockerfile("Dockerfile"), load_project()
    assert any("configs/" in p for p in dockerfile_problems(text, project, ignore=[*_dockerignore(), "configs"]))
    dropped = dockerfile_problems(text, project, ignore=[*_dockerignore(), "**/*.pt"])
    assert any("shapesnet.pt" in p for p in dropped), "package data (neuronscan/demo/*.pt) must reach the image"


def test_dockerignore_keeps_local_state_out_and_the_sources_in():
    patterns = _dockerignore()
    for rel in (
        ".git",
        ".venv/bin/python",
        "runs/x",
        "data/shapes_world",
        "benchmarks/results/a.json",
        "neuronscan/__pycache__/cli.cpython-311.pyc",
        "pipelines/x.pyc",
        "neuronscan.egg-info/PKG-INFO",
    ):
        assert is_ignored(rel, patterns), f".dockerignore lets {rel} into the build context"
    for rel in (
        "pyproject.toml",
        "README.md",
        "neuronscan/__init__.py",
        "neuronscan/data/_sources.py",
        "neuronscan/demo/shapesnet.pt",
        "pipelines/probe.py",
        "configs/demo.yaml",
    ):
        assert not is_ignored(rel, patterns), f".dockerignore leaves out {rel}, which the image needs"


def test_dockerignore_matcher_on_hand_worked_cases():
    assert is_ignored("data/x", ["data"]) and not is_ignored("neuronscan/data/x", ["data"])  # anchored at the root
    assert is_ignored("a/b/__pycache__/m.pyc", ["**/__pycache__"])
    assert is_ignored("m.pyc", ["**/*.pyc"]) and is_ignored("a/m.pyc", ["**/*.pyc"])
    assert is_ignored("x.egg-info/PKG-INFO", ["*.egg-info"]) and not is_ignored("a/x.egg-info", ["*.egg-info"])
    assert not is_ignored("docs/keep.md", ["docs", "!docs/keep.md"])
    assert dockerignore_patterns("# c\n/runs/\n\n !keep\n") == ["runs", "!keep"]


def test_manifests_run_the_images_ray():
    ray_pin = _exact_pin(load_project(), "ray")
    crds = REPO / "k8s" / "crds"
    found = {}
    for path in sorted((REPO / "k8s").rglob("*.yaml")):
        if not path.is_relative_to(crds):
            for version in re.findall(r"rayVersion:\s*[\"']?([\w.]+)", path.read_text()):
                found.setdefault(version, []).append(path.relative_to(REPO).as_posix())
    assert found and set(found) == {ray_pin}, f"k8s/ rayVersion must be the image's Ray {ray_pin}: {found}"


def test_readme_says_how_to_build_push_and_point_the_manifests_at_the_image():
    kustomization = (REPO / "k8s" / "base" / "kustomization.yaml").read_text()
    assert re.search(r"- name: neuronscan\n\s+newName: \S+", kustomization), "k8s/base maps the image neuronscan"
    readme = (REPO / "k8s" / "README.md").read_text()
    for needed in (
        "docker build -f docker/Dockerfile.cuda",
        "docker build -f docker/Dockerfile ",
        "docker push",
        "kustomize edit set image neuronscan=",
        "k8s/overlays/cronjob-fallback/rayjob-template.yaml",
    ):
        assert needed in readme, f"k8s/README.md does not say {needed!r}"
