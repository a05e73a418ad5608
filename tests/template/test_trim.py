"""template/trim.py: answering "no" to a feature leaves a working project without it.

For each feature, and for all three off, the repository's tracked files (the template
machinery left out, as a bake does) are copied and trimmed; the copy must lack exactly the
feature's files, name nothing of it (``dangling``), pass ruff, import every module, and pass
the fast tests of the parts the feature touched, run with this virtualenv inside the copy.
The removed files are written out here, not read from features.json. The marker rules
themselves are checked on small trees.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.template.forks import (
    FEATURES,
    REMOVED,
    ROOT,
    VENV_BIN,
    files_under,
    tracked_files,
)

# Shared files whose marked blocks go with the feature (a line of each block, written out).
BLOCK_LINES = {
    "horovod": {
        "Makefile": "horovod-env: ## Build (or reuse) the pinned Horovod virtualenv",
        "README.md": "## Horovod",
        "training/runtime.py": '"horovod": "training.horovod_runtime",',
        "scripts/localjob.py": '"mpi": "scripts.horovod_launch:mpi_tasks",',
    },
    "parameter_server": {
        "training/runtime.py": '"parameter_server": "training.parameter_server_runtime",',
        "tests/scripts/test_jobs_run.py": "def test_each_parameter_server_process_gets_its_own",
    },
    "github_actions": {
        "Makefile": "lint-workflows: $(STAMP) ## Lint the GitHub workflows",
        "requirements.txt": "zizmor==",
        "README.md": "## CI/CD",
    },
}
# The fast tests of the parts each feature touches, run inside the trimmed copy.
TOUCHED_TESTS = {
    "horovod": ["tests/scripts/test_jobs_run_input.py", "tests/training/test_runtime.py"],
    "parameter_server": ["tests/scripts/test_jobs_run.py", "tests/scripts/test_jobs_azure.py"],
    "github_actions": ["tests/scripts/test_jobs_specs.py"],
}
ALL_OFF_TESTS = [
    *{path for paths in TOUCHED_TESTS.values() for path in paths},
    "tests/training/test_distribute.py::"
    "test_a_cluster_runtime_this_project_lacks_is_refused_not_run_alone",
    "tests/training/test_steps.py::"
    "test_the_step_is_compiled_only_where_the_model_asks_and_the_runtime_allows",
    "tests/training/test_training_hardening.py",
]
COMBOS = {
    "horovod": ("horovod",),
    "parameter_server": ("parameter_server",),
    "github_actions": ("github_actions",),
    "all_off": FEATURES,
}
MPI_SPEC = """\
$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
type: command
command: echo never runs
code: .
environment: azureml:tf-mnist-train@latest
distribution:
  type: mpi
  process_count_per_instance: 2
"""


def load_trim() -> ModuleType:
    """template/trim.py, imported by path as the cookiecutter hook imports it."""
    spec = importlib.util.spec_from_file_location("fork_trim", ROOT / "template" / "trim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trim_module = load_trim()


def copy_tree(destination: Path) -> Path:
    for path in tracked_files():
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    return destination


def run_in(tree: Path, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module", params=sorted(COMBOS))
def trimmed(request, tmp_path_factory) -> tuple[tuple[str, ...], Path]:
    """(the features answered "no", the trimmed copy)."""
    off = COMBOS[request.param]
    tree = copy_tree(tmp_path_factory.mktemp(f"trimmed-{request.param}"))
    trim_module.trim(tree, {**dict.fromkeys(FEATURES, "yes"), **dict.fromkeys(off, "no")})
    return off, tree


# ------------------------------------------------------------------------ the real tree


def test_all_yes_leaves_every_file_byte_for_byte(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    trim_module.trim(tree, dict.fromkeys(FEATURES, "yes"))
    assert files_under(tree) == set(tracked_files())
    changed = [p for p in tracked_files() if (tree / p).read_bytes() != (ROOT / p).read_bytes()]
    assert changed == []


def test_the_trimmed_copy_lacks_exactly_the_features_files(trimmed) -> None:
    off, tree = trimmed
    removed = set().union(*(REMOVED[feature] for feature in off))
    assert files_under(tree) == set(tracked_files()) - removed
    for feature in off:
        for path, line in BLOCK_LINES[feature].items():
            if path not in removed:
                assert line not in (tree / path).read_text(), (feature, path)
    for feature in set(FEATURES) - set(off):  # the blocks of the features kept are kept
        for path, line in BLOCK_LINES[feature].items():
            assert line in (tree / path).read_text(), (feature, path)


def test_nothing_in_the_trimmed_copy_names_what_was_removed(trimmed) -> None:
    off, tree = trimmed
    for feature in off:
        assert trim_module.dangling(tree, feature) == [], feature
        leftovers = [
            f"{path}:{number}"
            for path in files_under(tree)
            if path.endswith((".py", ".md", ".yml", ".yaml", ".txt", ".toml")) or "Makefile" in path
            for number, line in enumerate((tree / path).read_text().splitlines(), 1)
            if (marker := trim_module.MARKER.match(line)) and marker["feature"] == feature
        ]
        assert leftovers == [], feature


def test_the_trimmed_copy_is_ruff_clean_and_every_module_imports(trimmed) -> None:
    _, tree = trimmed
    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        result = run_in(tree, str(VENV_BIN / command[0]), *command[1:])
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    result = run_in(tree, sys.executable, "-m", "compileall", "-q", ".")
    assert result.returncode == 0, result.stdout[-3000:]
    modules = sorted(
        ".".join(path.removesuffix(".py").split("/")).removesuffix(".__init__")
        for path in files_under(tree)
        if path.endswith(".py")
        and path.split("/")[0] in {"training", "scripts", "infra", "benchmarks"}
        and not path.endswith("__main__.py")
    )
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = run_in(tree, sys.executable, "-c", script, *modules)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_trimmed_copys_make_test_needs_no_removed_target(trimmed) -> None:
    off, tree = trimmed
    dry_run = run_in(tree, "make", "-n", "test")
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    assert ("zizmor" in dry_run.stdout) is ("github_actions" not in off)
    targets = run_in(tree, "make", "help")
    assert targets.returncode == 0, targets.stderr[-2000:]
    assert ("horovod-env" in targets.stdout) is ("horovod" not in off)
    assert ("lint-workflows" in targets.stdout) is ("github_actions" not in off)


def test_the_trimmed_copys_tests_of_the_touched_parts_pass(trimmed) -> None:
    off, tree = trimmed
    tests = ALL_OFF_TESTS if len(off) > 1 else TOUCHED_TESTS[off[0]]
    result = run_in(
        tree,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "not slow",
        "-p",
        "no:cacheprovider",
        *tests,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.parametrize("combo", ["horovod", "all_off"])
def test_a_fork_without_horovod_refuses_an_mpi_spec(tmp_path: Path, combo: str) -> None:
    tree = copy_tree(tmp_path / "tree")
    trim_module.trim(tree, dict.fromkeys(COMBOS[combo], "no"))
    spec = tmp_path / "mpi.yml"
    spec.write_text(MPI_SPEC)
    result = run_in(
        tree, sys.executable, "-m", "scripts", "run", str(spec), "--outputs", str(tmp_path / "out")
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "asks for `distribution: type: mpi` (Horovod over MPI)" in result.stderr
    assert "made from the template with horovod=no" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ the marker rules


def small_tree(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_a_no_removes_the_block_with_its_markers_in_any_comment_syntax(tmp_path: Path) -> None:
    tree = small_tree(
        tmp_path,
        {
            "a.py": "x = 1\n# fork:begin horovod\nimport horovod\n# fork:end horovod\ny = 2\n",
            "b.md": "Text\n<!-- fork:begin horovod -->\n## H\n<!-- fork:end horovod -->\nEnd\n",
            "c.yml": "a:\n  # fork:begin parameter_server\n  - ps\n  # fork:end parameter_server\n",
            "Makefile": "t:\n# fork:begin horovod\nh:\n# fork:end horovod\n",
        },
    )
    trim_module.trim(tree, {"horovod": "no", "parameter_server": "yes", "project_slug": "x"})
    assert (tree / "a.py").read_text() == "x = 1\ny = 2\n"
    assert (tree / "b.md").read_text() == "Text\nEnd\n"
    assert (tree / "c.yml").read_text() == (
        "a:\n  # fork:begin parameter_server\n  - ps\n  # fork:end parameter_server\n"
    )
    assert (tree / "Makefile").read_text() == "t:\n"


def test_a_mention_of_a_marker_inside_prose_is_not_a_marker(tmp_path: Path) -> None:
    text = "Blocks run from `fork:begin horovod` to `fork:end horovod` lines.\n"
    tree = small_tree(tmp_path, {"README.md": text})
    trim_module.trim(tree, {"horovod": "no"})
    assert (tree / "README.md").read_text() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n# fork:begin horovod\nb\n", "x.py:2: 'fork:begin horovod' has no 'fork:end horovod'"),
        ("a\n# fork:end horovod\n", "x.py:2: 'fork:end horovod' but no block is open"),
        (
            "# fork:begin horovod\n# fork:begin github_actions\n",
            "x.py:2: 'fork:begin github_actions' inside the 'horovod' block opened at line 1; "
            "close it first (blocks do not nest)",
        ),
        (
            "# fork:begin horovod\n# fork:end github_actions\n",
            "x.py:2: 'fork:end github_actions' but 'horovod' is open",
        ),
        (
            "# fork:begin hvd\n# fork:end hvd\n",
            (
                "x.py:1: marker for unknown feature 'hvd' "
                "(features.json knows github_actions, horovod, parameter_server)"
            ),
        ),
    ],
)
def test_a_wrong_marker_is_an_error_naming_file_and_line_and_nothing_changes(
    tmp_path: Path, text: str, message: str
) -> None:
    tree = small_tree(tmp_path, {"x.py": text, "docs/horovod.md": "kept\n"})
    with pytest.raises(trim_module.TrimError) as error:
        trim_module.trim(tree, {"horovod": "yes"})  # checked whatever the answers
    assert str(error.value) == message
    with pytest.raises(trim_module.TrimError):
        trim_module.trim(tree, {"horovod": "no"})
    assert (tree / "docs/horovod.md").read_text() == "kept\n"
    assert (tree / "x.py").read_text() == text


def test_an_answer_other_than_yes_or_no_is_refused(tmp_path: Path) -> None:
    with pytest.raises(trim_module.TrimError, match=r"horovod='maybe': answer yes or no"):
        trim_module.trim(small_tree(tmp_path, {"a.py": "x = 1\n"}), {"horovod": "maybe"})


def test_dangling_finds_a_reference_left_behind(tmp_path: Path) -> None:
    tree = small_tree(
        tmp_path,
        {
            "scripts/x.py": "from training import horovod_runtime\n",
            "README.md": "Intro\n\nRun `make train-horovod`.\n",
            "template/features.json": "horovod_runtime\n",  # the machinery is never searched
        },
    )
    assert trim_module.dangling(tree, "horovod") == [
        "README.md:3: train-horovod",
        "scripts/x.py:1: horovod_runtime",
    ]
