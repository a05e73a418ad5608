"""The cookiecutter template (template/): bake forks with the real command and prove they work.

Each answer combination is baked once per module (``cookiecutter --no-input <repo> --directory
template key=value ...`` in a subprocess, as the README states it) and checked for its exact
file tree, leftover template text, the renamed names, ``ruff`` and its own fast test suite
(run with this repository's virtualenv, cwd and PYTHONPATH the baked tree). Wrong answers fail
before anything is written. ``cruft`` takes a fork from one template commit to the next.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.template.forks import REMOVED, ROOT, VENV_BIN, files_under, tracked_files

DEFAULTS = {
    "project_name": "Train and deploy a TensorFlow model at scale on Azure Machine Learning",
    "project_slug": "tf-mnist-azureml",
    "resource_prefix": "mnist",
    "owner": "ml-platform",
    "azure_location": "eastus",
    "gpu_vm_size": "Standard_NC4as_T4_v3",
    "gpu_max_nodes": "2",
    "low_priority": "no",
    "network_profile": "standard",
    "parameter_server": "yes",
    "horovod": "yes",
    "github_actions": "yes",
}
ACME = {
    "project_name": "Acme Digits",
    "project_slug": "acme-digits",
    "resource_prefix": "acme",
    "azure_location": "swedencentral",
    "horovod": "no",
}  # the README's command
COMBOS = {
    "defaults": {},
    "all_off": {
        "horovod": "no",
        "parameter_server": "no",
        "github_actions": "no",
        "owner": "ai-lab",
    },
    "private_low_priority": {"network_profile": "private", "low_priority": "yes"},
    "acme": ACME,
}

# The fast suite of the Acme fork (the README's command) runs whole; the all-off and private
# forks run the tests that read what their answers change: the stack config and program
# (infra), preflight, the job and serving specs, and the workflows where they stay. The
# defaults fork is the repository byte for byte (test_defaults_reproduce_the_repository), so
# the repository's own suite is its suite.
FULL = ["-m", "not slow"]
SUBSET = [
    "-m",
    "not slow",
    "tests/infra",
    "tests/scripts/test_infra_preflight.py",
    "tests/scripts/test_jobs_specs.py",
    "tests/scripts/test_serving_specs.py",
    "tests/workflows",
]
SUITES = {"all_off": SUBSET, "private_low_priority": SUBSET, "acme": FULL}

# Old names that must be gone from a renamed fork (the data set keeps its name: `mnist`).
OLD_NAMES = [
    r"tf-mnist-azureml",
    r"(?<![\w-])tf-mnist(?!\w)",
    r"mnist-digits",
    r"(?<![\w-])(?:rg|mlw|id|alert|log|kv|appi|vnet)-mnist-",
    r"(?<![\w-])(?:st|kv|cr)mnist[a-z0-9]",
    r"default: mnist$",
    r'"project"\)? ?[:=]=? "mnist"',
    r"default: eastus$",
    r"^  \S+:location: westeurope$",  # the example stacks
]
LEFTOVER = re.compile(r"\{\{-?\s*cookiecutter|cookiecutter\.(?:project|resource|owner|azure|gpu)")


def _answers(combo: str) -> dict[str, str]:
    return {**DEFAULTS, **COMBOS[combo]}


def _cookiecutter(
    out: Path, answers: dict[str, str], template: str | Path = ROOT, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    args = [f"{key}={value}" for key, value in answers.items()]
    command = [str(VENV_BIN / "cookiecutter"), "--no-input", str(template)]
    command += ["--directory", "template", "-o", str(out), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def expected_tree(combo: str) -> list[str]:
    answers = _answers(combo)
    gone = {path for feature, paths in REMOVED.items() if answers[feature] == "no"
            for path in paths}  # fmt: skip
    return sorted({*tracked_files(), ".cruft.json"} - gone)


class Bakes(dict):
    """combo -> its baked project, baked on first use (once per module)."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, combo: str) -> Path:
        result = _cookiecutter(self.out / combo, _answers(combo))
        assert result.returncode == 0, result.stderr[-3000:]
        (project,) = (self.out / combo).iterdir()
        self[combo] = project
        return project


@pytest.fixture(scope="module")
def baked() -> Iterator[Bakes]:
    """Outside pytest's temporary root: a fork's own tests run there, and its demo test checks
    that `demo --fresh` refuses a folder that holds the repository (a common parent would)."""
    out = Path(tempfile.mkdtemp(prefix="bakes-"))
    try:
        yield Bakes(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_defaults_are_the_repository_values() -> None:
    """cookiecutter.json's defaults are the values the repository has today (written out)."""
    context = json.loads((ROOT / "template" / "cookiecutter.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in context.items() if not k.startswith("_")} == DEFAULTS
    pulumi = (ROOT / "Pulumi.yaml").read_text(encoding="utf-8")
    for key, value in [("project", "mnist"), ("owner", "ml-platform"), ("location", "eastus"),
                       ("gpuVmSize", "Standard_NC4as_T4_v3"), ("gpuMaxNodes", "2"),
                       ("gpuPriority", "Dedicated"), ("profile", "standard")]:  # fmt: skip
        assert re.search(rf"(?m)^  {key}:\n(?:    .*\n)*?    default: {value}$", pulumi), key
    assert "name: tf-mnist-azureml\n" in pulumi


@pytest.mark.parametrize("combo", list(COMBOS))
def test_file_tree(baked: Bakes, combo: str) -> None:
    assert sorted(files_under(baked[combo])) == expected_tree(combo)


def test_defaults_reproduce_the_repository(baked: Bakes) -> None:
    """Byte for byte, modes included: the template cannot drift from the repository."""
    project = baked["defaults"]
    assert project.name == "tf-mnist-azureml"
    different = [
        name
        for name in tracked_files()
        if (project / name).read_bytes() != (ROOT / name).read_bytes()
        or os.access(project / name, os.X_OK) != os.access(ROOT / name, os.X_OK)
    ]
    assert different == []
    cruft = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))
    assert cruft["template"] == str(ROOT)
    assert cruft["directory"] == "template"
    assert re.fullmatch(r"[0-9a-f]{40}", cruft["commit"])
    assert cruft["context"]["cookiecutter"]["project_slug"] == "tf-mnist-azureml"
    # The answers in cookiecutter.json's order, as cruft rewrites them at each update: a fork's
    # first update then changes only the commit in this file.
    assert list(cruft["context"]["cookiecutter"]) == [*DEFAULTS, "_template", "_commit"]


@pytest.mark.parametrize("combo", list(COMBOS))
def test_no_template_leftovers(baked: Bakes, combo: str) -> None:
    """No Jinja or cookiecutter variable survives, and no file gains a `{{` of its own."""
    project, problems = baked[combo], []
    for name in sorted(files_under(project)):
        if name == ".cruft.json":
            continue
        text = (project / name).read_bytes().decode("utf-8", errors="replace")
        source = (ROOT / name).read_bytes().decode("utf-8", errors="replace")
        if LEFTOVER.search(text) or text.count("{{") > source.count("{{"):
            problems.append(name)
    assert problems == []


def test_acme_names_everywhere(baked: Bakes) -> None:
    """The Acme fork: every old name gone, the new ones where the old ones were."""
    project = baked["acme"]
    found = [
        f"{name}: {pattern}"
        for name in sorted(files_under(project))
        if name != ".cruft.json"
        for pattern in OLD_NAMES
        if re.search(pattern, (project / name).read_text(encoding="utf-8", errors="replace"), re.M)
    ]
    assert found == []
    read = {name: (project / name).read_text(encoding="utf-8") for name in (
        "Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml", "pyproject.toml", "README.md",
        "training/data.py", "serving/endpoint.yml", "serving/deployment.yml",
        "training/jobs/single.yml", "tests/infra/test_infra_config.py",
    )}  # fmt: skip
    assert "name: acme-digits\n" in read["Pulumi.yaml"]
    for key, value in [("project", "acme"), ("owner", "ml-platform"), ("location", "swedencentral"),
                       ("gpuVmSize", "Standard_NC4as_T4_v3"), ("profile", "standard")]:  # fmt: skip
        assert re.search(
            rf"(?m)^  {key}:\n(?:    .*\n)*?    default: {value}$", read["Pulumi.yaml"]
        )
    assert "  acme-digits:location: swedencentral\n" in read["Pulumi.dev.yaml"]
    assert "  acme-digits:owner: ml-platform\n" in read["Pulumi.prod.yaml"]
    assert 'name = "acme-digits"\n' in read["pyproject.toml"]
    assert read["README.md"].startswith("# Acme Digits\n")
    assert '".cache" / "acme-digits" / "mnist"' in read["training/data.py"]
    assert "name: acme-digits\n" in read["serving/endpoint.yml"]
    assert "  project: acme-digits\n" in read["serving/endpoint.yml"]
    assert "model: azureml:tf-acme@latest" in read["serving/deployment.yml"]
    assert "experiment_name: tf-acme\n" in read["training/jobs/single.yml"]
    assert "path: azureml:mnist@latest" in read["training/jobs/single.yml"]  # the data set
    assert '"project": "acme",' in read["tests/infra/test_infra_config.py"]


def test_owner_renamed(baked: Bakes) -> None:
    """The all-off fork also has another owner: the tag default, the prod stack, the tests."""
    project = baked["all_off"]
    left = [
        n
        for n in sorted(files_under(project))
        if "ml-platform" in (project / n).read_text(errors="replace")
    ]
    assert left == []
    pulumi = (project / "Pulumi.yaml").read_text(encoding="utf-8")
    assert re.search(r"(?m)^  owner:\n(?:    .*\n)*?    default: ai-lab$", pulumi)
    assert "  tf-mnist-azureml:owner: ai-lab\n" in (project / "Pulumi.prod.yaml").read_text()
    policy = (project / "tests/infra/test_infra_policy.py").read_text(encoding="utf-8")
    assert 'tags.get("owner") == "ai-lab"' in policy


def test_private_low_priority_defaults(baked: Bakes) -> None:
    pulumi = (baked["private_low_priority"] / "Pulumi.yaml").read_text(encoding="utf-8")
    for key, value in [("profile", "private"), ("gpuPriority", "LowPriority"),
                       ("location", "eastus"), ("project", "mnist")]:  # fmt: skip
        assert re.search(rf"(?m)^  {key}:\n(?:    .*\n)*?    default: {value}$", pulumi), key


@pytest.mark.parametrize("combo", list(COMBOS))
def test_ruff_clean(baked: Bakes, combo: str) -> None:
    for check in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [str(VENV_BIN / "ruff"), *check], cwd=baked[combo], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("combo", list(SUITES))
def test_fast_suite(baked: Bakes, combo: str, mnist_dir: Path) -> None:
    """The fork's own tests pass, with this repository's virtualenv (see SUITES)."""
    project = baked[combo]
    args = [a for a in SUITES[combo] if not a.startswith("tests/") or (project / a).exists()]
    env = {**os.environ, "PYTHONPATH": str(project), "MNIST_DATA_DIR": str(mnist_dir)}
    env.pop("PYTEST_ADDOPTS", None)
    # The fork's `make` targets (the workflow lint runs one) find this virtualenv up to date.
    (project / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    mtime = (ROOT / "requirements.txt").stat().st_mtime
    os.utime(project / "requirements.txt", (mtime, mtime))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        (project / ".venv").unlink()
    assert result.returncode == 0, result.stdout[-12000:]


# ---------------------------------------------------------------------------------------------
# Wrong answers: refused before anything is written, naming the variable and what is allowed
# ---------------------------------------------------------------------------------------------

BAD = [
    ("resource_prefix", "Acme", "2-10 lowercase letters or digits"),
    ("resource_prefix", "a", "2-10 lowercase letters or digits"),
    ("resource_prefix", "averylongprefix", "2-10 lowercase letters or digits"),
    ("azure_location", "mars", "allowed: "),
    ("gpu_vm_size", "Standard_NC6", "retired"),
    ("gpu_vm_size", "Standard_D2", "allowed: "),
    ("gpu_max_nodes", "0", "allowed: 1 to 100"),
    ("gpu_max_nodes", "many", "expected an integer"),
    ("network_profile", "secret", "allowed: standard, private"),
    ("low_priority", "maybe", "allowed: yes, no"),
    ("parameter_server", "true", "allowed: yes, no"),
    ("horovod", "y", "allowed: yes, no"),
    ("github_actions", "No", "allowed: yes, no"),
    ("project_slug", "Acme Digits", "allowed: lowercase letters, digits and single hyphens"),
    ("project_slug", "acme--digits", "allowed: lowercase letters, digits and single hyphens"),
    ("owner", "", "allowed: one line of text"),
    ("project_name", 'Acme "Digits"', "allowed: one line of text"),
]


@pytest.mark.parametrize(("variable", "value", "allowed"), BAD, ids=[f"{v}={x}" for v, x, _ in BAD])
def test_bad_answer_refused(tmp_path: Path, variable: str, value: str, allowed: str) -> None:
    out = tmp_path / "out"
    result = _cookiecutter(out, {**ACME, variable: value})
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if line.startswith(f"  - {variable}")]
    assert message, result.stderr[-2000:]
    assert allowed in message[0]
    assert "nothing was written" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_relative_template_path(tmp_path: Path) -> None:
    """`cookiecutter . --directory template` from the repository, output elsewhere."""
    result = _cookiecutter(tmp_path, {"project_slug": "relative"}, template=".", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "relative" / "Pulumi.yaml").read_text().startswith("# The Azure ML")
    assert "name: relative\n" in (tmp_path / "relative" / "Pulumi.yaml").read_text()


# ---------------------------------------------------------------------------------------------
# cruft: a fork learns it is behind, and takes the template's change as a diff
# ---------------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    who = ["-c", "user.name=Template Test", "-c", "user.email=template@example.com"]
    done = subprocess.run(["git", *who, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _throwaway_template(where: Path) -> Path:
    """A git copy of this repository's working tree (tracked files and template/) at one
    commit."""
    copy = where / "template-repo"
    for name in tracked_files() + [
        n for n in subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z", "template"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split("\0") if n
    ]:  # fmt: skip
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    _git(copy, "init", "-q", "-b", "main")
    _git(copy, "add", "-A")
    _git(copy, "commit", "-q", "-m", "template v1")
    return copy


def _cruft(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "cruft"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_cruft_update_brings_a_template_change(tmp_path: Path) -> None:
    template = _throwaway_template(tmp_path)
    forks = tmp_path / "forks"
    forks.mkdir()
    context = json.dumps({"project_slug": "acme-digits", "resource_prefix": "acme"})
    created = _cruft(forks, "create", str(template), "--directory", "template", "--no-input",
                     "--extra-context", context)  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    fork = forks / "acme-digits"
    assert json.loads((fork / ".cruft.json").read_text())["template"] == str(template)
    assert "name: acme-digits\n" in (fork / "Pulumi.yaml").read_text()
    _git(fork, "init", "-q", "-b", "main")
    _git(fork, "add", "-A")
    _git(fork, "commit", "-q", "-m", "baked")
    with (fork / "Makefile").open("a") as makefile:  # the fork's own edit
        makefile.write("# acme: our own target notes\n")
    _git(fork, "commit", "-q", "-am", "local edit")
    assert _cruft(fork, "check").returncode == 0

    data = template / "training" / "data.py"
    data.write_text(data.read_text().replace(
        'DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tf-mnist-azureml" / "mnist"',
        'DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tf-mnist-azureml" / "mnist-idx"',
    ))  # fmt: skip
    _git(template, "commit", "-q", "-am", "template v2: a new cache folder")

    behind = _cruft(fork, "check")
    assert behind.returncode != 0
    assert "out of date" in behind.stdout
    updated = _cruft(fork, "update", "-y")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    diff = _git(fork, "diff", "HEAD", "--", "training/data.py")
    assert (
        '-DEFAULT_CACHE_DIR = Path.home() / ".cache" / "acme-digits" / "mnist"\n'
        '+DEFAULT_CACHE_DIR = Path.home() / ".cache" / "acme-digits" / "mnist-idx"\n'
    ) in diff
    assert (fork / "Makefile").read_text().endswith("# acme: our own target notes\n")
    assert _cruft(fork, "check").returncode == 0
    state = json.loads((fork / ".cruft.json").read_text())
    assert state["commit"] == _git(template, "rev-parse", "HEAD").strip()
