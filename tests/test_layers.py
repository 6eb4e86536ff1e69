"""The architecture as a test: every module's imports point one way (ARCHITECTURE.md).

    config, console  <-  engine  <-  study  <-  analysis  <-  dashboard  <-  cli
    tools may import anything; nothing outside tools imports tools.

Imports are read from the source (top-level and inside functions alike), so a late import cannot
hide an arrow pointing the wrong way. Optuna's private API may be touched in `sweeps/study/rdb.py`
only. The checker itself is tested on planted violations, so a checker that sees nothing fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kit import ROOT

# What each layer may import from this project (prefixes); third-party rules below.
ALLOWED: dict[str, tuple[str, ...]] = {
    "sweeps.config": (),
    "sweeps.console": (),
    "sweeps.engine": ("sweeps.config", "sweeps.engine"),
    "sweeps.study": ("sweeps.config", "sweeps.engine", "sweeps.study"),
    "analysis": ("sweeps.config", "sweeps.console", "sweeps.study.record", "sweeps.study.storage",
                 "sweeps.study.errors", "sweeps.engine.model", "sweeps.engine.data", "analysis"),
    "sweeps.dashboard": ("sweeps.config", "sweeps.console", "sweeps.engine", "sweeps.study", "analysis",
                         "sweeps.dashboard"),
    "sweeps.cli": ("sweeps.config", "sweeps.console", "sweeps.engine", "sweeps.study", "analysis",
                   "sweeps.dashboard", "sweeps.cli"),
    "sweeps.__main__": ("sweeps.cli",),
    "sweeps": (),  # the package's own __init__
    "sweeps.tools": ("sweeps", "analysis"),
}
# Third-party packages a layer must never import.
FORBIDDEN_EXTERNAL: dict[str, tuple[str, ...]] = {
    "sweeps.config": ("torch", "optuna", "sqlalchemy", "pandas"),
    "sweeps.console": ("torch", "optuna", "sqlalchemy", "pandas"),
    "sweeps.engine": ("optuna", "sqlalchemy", "pandas", "optuna_dashboard"),
    "sweeps.study": ("optuna_dashboard", "pandas", "seaborn", "matplotlib"),
}
PRIVATE_OPTUNA = re.compile(r"optuna\.storages\._|\._storage\b|\._study_id\b|\._trial_id\b|_pop_waiting_trial_id"
                            r"|_get_stale_trial_ids|_set_trial_attr_without_commit|_create_scoped_session")
PRIVATE_HOME = "sweeps/study/rdb.py"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module `source` imports (relative imports resolved)."""
    out: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            named = [f"{prefix}.{alias.name}" for alias in node.names]
            modules = [n for n in named if _is_module(n)]
            out.update(modules)  # `from pkg import mod` depends on pkg.mod ...
            if len(modules) < len(named):
                out.add(prefix)  # ... `from mod import name` on mod
    return out


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(module: str) -> str:
    """The rule set a module falls under: the longest ALLOWED key it starts with."""
    keys = [k for k in ALLOWED if module == k or module.startswith(k + ".")]
    return max(keys, key=len)


def _ours(name: str) -> bool:
    return name == "sweeps" or name.startswith(("sweeps.", "analysis"))


def violations(module: str, names: set[str]) -> list[str]:
    """Every import of `module` that its layer forbids, as `module -> name` lines."""
    rule = layer(module)
    allowed = ALLOWED[rule]
    bad = []
    for name in sorted(names):
        if _ours(name):
            if name == module or name.startswith(module + "."):
                continue
            if name.startswith("sweeps.tools") and rule != "sweeps.tools":
                bad.append(f"{module} -> {name} (nothing imports tools)")
            elif not any(name == a or name.startswith(a + ".") for a in allowed):
                if rule == "sweeps.tools" or (name == "sweeps" and rule != "sweeps"):
                    continue  # tools import anything; `from sweeps import x` names x, checked on its own
                bad.append(f"{module} -> {name}")
        else:
            top = name.split(".")[0]
            if top in FORBIDDEN_EXTERNAL.get(rule, ()):
                bad.append(f"{module} -> {name} (third-party {top} is not for this layer)")
    return bad


def project_modules() -> list[Path]:
    return sorted(p for folder in ("sweeps", "analysis") for p in (ROOT / folder).rglob("*.py"))


def test_every_import_points_the_right_way():
    bad = []
    for path in project_modules():
        module = module_name(path)
        bad += violations(module, imports(path.read_text(), module, path.name == "__init__.py"))
    assert not bad, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(bad)


def test_optuna_private_api_only_in_its_one_module():
    offenders = []
    for path in project_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel == PRIVATE_HOME:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE_OPTUNA.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "Optuna's private API outside sweeps/study/rdb.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("module, source, expected", [
    ("sweeps.engine.fit", "from ..study import runner\n", "sweeps.engine.fit -> sweeps.study"),
    ("sweeps.engine.model", "def f():\n    import optuna\n", "third-party optuna"),
    ("sweeps.config", "import torch\n", "third-party torch"),
    ("sweeps.study.runner", "from ..dashboard.publish import publish\n", "sweeps.study.runner -> sweeps.dashboard"),
    ("analysis.load", "from sweeps.study import recovery\n", "analysis.load -> sweeps.study.recovery"),
    ("sweeps.cli", "from .tools import bench\n", "nothing imports tools"),
    ("sweeps.study.record", "from sweeps.cli import main\n", "sweeps.study.record -> sweeps.cli"),
])
def test_the_checker_catches_a_planted_wrong_way_import(module, source, expected):
    found = violations(module, imports(source, module, is_package=False))
    assert any(expected in v for v in found), found


def test_the_checker_accepts_the_allowed_direction():
    for module, source in (("sweeps.study.runner", "from ..engine import fit\nfrom ..config import Config\n"),
                           ("sweeps.dashboard.figure", "from analysis.curves import draw\n"),
                           ("sweeps.tools.bench", "from ..study.runner import run\nfrom ..cli import main\n")):
        assert violations(module, imports(source, module, is_package=False)) == []


def test_modules_stay_small_or_say_why():
    long = []
    for path in project_modules():
        lines = path.read_text().splitlines()
        doc = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if len(lines) > 300 and "300 lines" not in doc:
            long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
    assert not long, "modules over 300 lines without a reason in their docstring:\n" + "\n".join(long)


def test_every_module_says_what_it_is_for():
    missing = [str(p.relative_to(ROOT)) for p in project_modules()
               if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, missing


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for path in project_modules():
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
                    and not ast.get_docstring(node)):
                missing.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)
