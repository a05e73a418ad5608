"""The scoring environment (serving/environment/conda.yml) has every package the uploaded scoring
code (serving/code/) imports: the test environment has many more, so a missing pin would only
show as a failed deployment on Azure."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CODE = ROOT / "serving" / "code"
CONDA = ROOT / "serving" / "environment" / "conda.yml"


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pinned() -> set[str]:
    dependencies = yaml.safe_load(CONDA.read_text())["dependencies"]
    (pip,) = [d["pip"] for d in dependencies if isinstance(d, dict)]
    return {_name(r) for r in pip}


def _installed_with(names: set[str]) -> set[str]:
    """``names`` and everything they require (extras left out), as installed here."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # for another platform (e.g. tzdata on Windows)
            continue
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(_name(requirement))
    return found


def _imported_modules() -> set[str]:
    """Top-level modules imported by serving/code/*.py, standard library and siblings left out."""
    siblings = {path.stem for path in CODE.glob("*.py")}
    modules = set()
    for path in CODE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return {
        m
        for m in modules
        if m.split(".")[0] not in sys.stdlib_module_names | siblings | {"__future__"}
    }


def test_every_package_the_scoring_code_imports_is_in_the_scoring_environment():
    environment = _installed_with(_pinned())
    providers = metadata.packages_distributions()
    imported = _imported_modules()
    assert {"yaml", "numpy", "keras", "tensorflow"} <= {m.split(".")[0] for m in imported}
    missing = {}
    for module in sorted(imported):
        distributions = {_name(d) for d in providers.get(module.split(".")[0], [])}
        if module.startswith("azureml."):  # a namespace shared by several distributions
            distributions = {_name(metadata.distribution(d).name) for d in distributions}
            distributions = {d for d in distributions if _provides(d, module)}
        if not distributions & environment:
            missing[module] = sorted(distributions)
    assert not missing, f"imported by serving/code but not in {CONDA.name}: {missing}"


def _provides(distribution: str, module: str) -> bool:
    files = metadata.files(distribution) or []
    prefix = module.replace(".", "/")
    return any(str(f).startswith(prefix) for f in files)
