"""The runtimes' shape: one base module both runtime modules build on, no import circle in the
training package, behaviour in hooks rather than in checks of ``Runtime.kind``, and imports the
Horovod environment (no MLflow) and the flag check (no TensorFlow) can afford.

Read from the source with ``ast`` (every ``import``, at module level or inside a function, is
an edge), and from a fresh interpreter for what importing really loads.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

TRAINING = ROOT / "training"


def _trees() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(TRAINING.glob("*.py"))}


def _imported_modules(tree: ast.AST) -> set[str]:
    """Dotted names of the modules an ``import`` or ``from`` anywhere in ``tree`` loads."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """training module -> the training modules it imports (``training.x`` -> ``x``)."""
    trees = _trees()
    graph: dict[str, set[str]] = {name: set() for name in trees}
    for name, tree in trees.items():
        for dotted in _imported_modules(tree):
            parts = dotted.split(".")
            if parts[0] == "training" and len(parts) > 1 and parts[1] in trees:
                graph[name].add(parts[1])
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_finds_a_circle_and_accepts_a_tree():
    """The checker itself: it must see a two-module circle and a longer one."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_runtime_modules_build_on_the_base_and_not_on_each_other():
    """The cluster runtimes are imported by name (``CLUSTER_RUNTIMES``), so a project made
    without one loses a module and a line, and no import."""
    graph = import_graph()
    assert graph["runtime"] == set()
    assert graph["distribute"] == {"runtime"}
    # fork:begin parameter_server
    assert graph["parameter_server_runtime"] == {"runtime"}
    # fork:end parameter_server
    # fork:begin horovod
    assert graph["horovod_runtime"] == {"runtime"}
    # fork:end horovod


def test_the_training_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) >= 10, sorted(graph)  # the parse found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_code_branches_on_the_runtime_kind():
    """``kind`` is a name for metrics and records; what a runtime does differently is a hook
    or property of its class (``ranks_per_step``, ``saves_checkpoints``, ``epoch_dataset``,
    ``run_steps``, ...)."""
    branches = []
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            operands = []
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.Match):
                operands = [node.subject]
            if any(isinstance(op, ast.Attribute) and op.attr == "kind" for op in operands):
                branches.append(f"training/{name}.py:{node.lineno}")
    assert branches == []


def test_flags_load_no_tensorflow_and_the_cluster_runtimes_load_no_mlflow():
    """Importing the training script and the base runtime loads no TensorFlow (a bad flag
    costs a usage line, not a 5-second import); importing everything a rank imports before
    training loads no MLflow (the Horovod environment has none)."""
    script = textwrap.dedent(
        """
        import importlib, json, sys
        import training.train, training.runtime
        before = "tensorflow" in sys.modules
        import training.distribute
        for module in training.runtime.CLUSTER_RUNTIMES.values():
            importlib.import_module(module)
        print(json.dumps({
            "tensorflow_before": before,
            "tensorflow_after": "tensorflow" in sys.modules,
            "mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"),
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"tensorflow_before": False, "tensorflow_after": True, "mlflow": []}


def test_the_graph_reads_function_level_imports():
    """A lazy ``from training import x`` inside a function is an edge too (the old circle
    went through one)."""
    source = "def detect():\n    from training import checkpoints\n"
    assert "training.checkpoints" in _imported_modules(ast.parse(source))
