"""Imports run one way: ``pipelines`` imports ``neuronscan``, never the reverse (only the CLI, the top of the
stack, calls ``pipelines``' public entry); the library's packages keep to their layer (stats is pure, jobs does
not import the CLI, the installed package ships no test helpers)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "neuronscan"


def _imports(path: Path, root: Path) -> set[str]:
    """Every module name a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def _modules(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _offenders(folder: Path, forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    out = []
    for path in _modules(folder):
        for name in _imports(path, root):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(root)} imports {name}")
    return out


def test_the_library_never_imports_pipelines():
    """Only the CLI, the top of the stack, calls the pipelines."""
    found = [o for o in _offenders(PACKAGE, ("pipelines",)) if not o.startswith("neuronscan/cli/")]
    assert found == []


def test_the_cli_calls_only_the_public_entry_of_pipelines():
    found = _offenders(PACKAGE / "cli", ("pipelines",))
    assert found, "the CLI runs the pipelines"
    assert [o for o in found if not o.endswith(" imports pipelines")] == []


def test_jobs_never_imports_the_cli():
    assert _offenders(PACKAGE / "jobs", ("neuronscan.cli",)) == []


def test_stats_imports_no_ray_no_io_no_config():
    assert _offenders(PACKAGE / "stats", ("ray", "neuronscan.io", "neuronscan.config", "pipelines")) == []


def test_the_checker_sees_a_violation(tmp_path):
    """The checks above can fail: a planted import of pipelines is found."""
    folder = tmp_path / "neuronscan" / "x"
    folder.mkdir(parents=True)
    (folder / "bad.py").write_text("from pipelines.score import run_score\nimport pipelines\n")
    assert len(_offenders(tmp_path / "neuronscan", ("pipelines",), root=tmp_path)) == 2


def test_the_installed_package_ships_no_browser_helper():
    assert not (PACKAGE / "report" / "_browser.py").exists()
    assert _offenders(PACKAGE, ("tests",)) == []


@pytest.mark.parametrize("module", ["neuronscan.cli", "neuronscan.jobs", "neuronscan.report", "neuronscan.diff",
                                    "neuronscan.registry", "neuronscan.io", "neuronscan.models"])
def test_importing_the_library_loads_no_pipeline(module):
    code = f"import sys, {module}; sys.exit(1 if any(m.split('.')[0] == 'pipelines' for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_the_builtin_models_and_the_registry_form_no_cycle():
    assert _offenders(PACKAGE / "models" / "_builtin.py", ("neuronscan.models._registry",)) == []
    spec = PACKAGE / "models" / "_spec.py"
    assert _offenders(spec, ("neuronscan.models._registry", "neuronscan.models._builtin")) == []
