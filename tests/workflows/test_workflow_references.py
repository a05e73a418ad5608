"""What actionlint would check and the schema cannot: the commands a workflow runs exist, with
the flags it passes; `needs` names real jobs without cycles; every expression refers to an
input, step output, matrix key, job or variable that exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
import yaml

from tests.workflows.workflow_files import (
    ROOT,
    Workflow,
    expressions,
    load_workflows,
    run_scripts,
    steps,
)

WORKFLOWS = load_workflows()
CONTEXTS = {"github", "env", "vars", "inputs", "steps", "needs", "matrix", "runner", "job"}
FUNCTIONS = {"always", "success", "failure", "cancelled", "hashFiles", "format", "contains"}


def _joined(script: str) -> str:
    return script.replace("\\\n", " ")


def make_targets() -> set[str]:
    found = set()
    for workflow in WORKFLOWS:
        for _, script in run_scripts(workflow):
            found |= set(re.findall(r"(?:^|[;&|]\s*|\s)make\s+(?:-\S+\s+)*([a-z][\w-]*)", script))
    return found


def scripts_calls() -> list[tuple[str, list[str]]]:
    """(command, its --flags) for every `python -m scripts COMMAND ...` line."""
    found = []
    for workflow in WORKFLOWS:
        for _, script in run_scripts(workflow):
            for line in _joined(script).splitlines():
                match = re.search(r"-m scripts\s+([a-z][\w-]*)(.*)", line)
                if match:
                    flags = re.findall(r"(?<!\S)(--[a-z][\w-]*)", match.group(2))
                    found.append((match.group(1), flags))
    return found


def test_workflows_run_make_targets_and_scripts_commands():
    expected = {"test", "venv", "preflight"}
    # fork:begin horovod
    expected.add("horovod-env")  # ci.yml builds the Horovod environment with it
    # fork:end horovod
    assert expected <= make_targets()
    assert {c for c, _ in scripts_calls()} == {"submit", "download", "register", "deploy", "invoke"}


@pytest.mark.parametrize("target", sorted(make_targets()))
def test_every_make_target_exists(target: str):
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@cache
def _help(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "flags"), scripts_calls(), ids=lambda v: v if isinstance(v, str) else None
)
def test_every_scripts_command_exists_with_the_flags_passed(command: str, flags: list[str]):
    result = _help(command)
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), (
            f"`python -m scripts {command}` has no {flag}"
        )


def test_files_the_workflows_name_exist():
    for workflow in WORKFLOWS:
        for _, script in run_scripts(workflow):
            for path in re.findall(r"(\.github/scripts/[\w.-]+|serving/[\w.-]+\.json)", script):
                assert (ROOT / path).is_file(), path
            for word in shlex.split(_joined(script).replace("\n", " ; "), comments=True):
                if word.startswith("training/jobs/"):
                    assert (ROOT / word).is_file(), word
    train = next(w for w in WORKFLOWS if w.name == "train.yml")
    for option in train.dispatch_inputs["spec"]["options"]:
        assert (ROOT / option).is_file(), option


# ---------------------------------------------------------------------------- needs graph


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_needs_name_existing_jobs_without_cycles(workflow: Workflow):
    graph = {
        job_id: [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])
        for job_id, job in workflow.jobs.items()
    }
    for job_id, needs in graph.items():
        for need in needs:
            assert need in graph, f"{workflow.name}/{job_id} needs unknown job {need}"
    done: set[str] = set()

    def visit(job_id: str, path: tuple[str, ...]) -> None:
        assert job_id not in path, f"{workflow.name}: cycle {' -> '.join((*path, job_id))}"
        if job_id not in done:
            for need in graph[job_id]:
                visit(need, (*path, job_id))
            done.add(job_id)

    for job_id in graph:
        visit(job_id, ())


# ---------------------------------------------------------------------------- expressions


def _outputs_written(step: dict) -> set[str]:
    return set(re.findall(r'echo "(\w+)=[^"]*" >> "\$GITHUB_OUTPUT"', step.get("run", "")))


def _env_names(*levels: dict) -> set[str]:
    names: set[str] = set()
    for level in levels:
        names |= set((level.get("env") or {}).keys())
    return names


def _references(expression: str) -> list[tuple[str, list[str]]]:
    """Context references in an expression: ('steps', ['submit', 'outputs', 'job']), ..."""
    text = re.sub(r"'[^']*'", "''", expression)  # string literals are not references
    found = []
    for match in re.finditer(r"(?<![\w.-])([A-Za-z_][\w-]*)((?:\.[A-Za-z_][\w-]*)*)", text):
        head, rest = match.group(1), match.group(2)
        if head in ("true", "false", "null") or text[match.end() :].lstrip().startswith("("):
            assert head in FUNCTIONS or not rest, f"unknown function {head}"
            continue
        found.append((head, [part for part in rest.split(".") if part]))
    return found


def _check(reference: tuple[str, list[str]], where: str, scope: dict) -> None:
    head, parts = reference
    assert head in CONTEXTS, f"{where}: unknown context {head!r}"
    if head == "inputs":
        assert parts[0] in scope["inputs"], f"{where}: no input {parts[0]}"
    elif head == "matrix":
        assert parts[0] in scope["matrix"], f"{where}: no matrix key {parts[0]}"
    elif head == "env":
        assert parts[0] in scope["env"], f"{where}: env.{parts[0]} is set nowhere above"
    elif head == "steps":
        step_id, kind, *name = parts
        assert step_id in scope["steps"], f"{where}: no earlier step with id {step_id}"
        if kind == "outputs" and scope["steps"][step_id] is not None:
            assert name[0] in scope["steps"][step_id], f"{where}: step {step_id} sets no {name}"
    elif head == "needs":
        assert parts[0] in scope["needs"], f"{where}: needs.{parts[0]} is not in needs"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_expressions_refer_to_things_that_exist(workflow: Workflow):
    inputs = set(workflow.dispatch_inputs)
    for job_id, job in workflow.jobs.items():
        matrix = set(((job.get("strategy") or {}).get("matrix") or {}).keys())
        needs = job.get("needs", [])
        scope = {
            "inputs": inputs,
            "matrix": matrix,
            "needs": {needs} if isinstance(needs, str) else set(needs),
            "env": _env_names(workflow.data, job),
            "steps": {},
        }
        where = f"{workflow.name}/{job_id}"
        header = {k: v for k, v in job.items() if k not in ("steps", "if")}
        for expression in expressions(header):
            for reference in _references(expression):
                _check(reference, where, {**scope, "steps": {}})
        for expression in expressions(job.get("if", ""), condition=True):
            for reference in _references(expression):
                _check(reference, where, scope)
        for index, step in enumerate(steps(job)):
            here = f"{where} step {step.get('id') or step.get('name') or index}"
            step_scope = {**scope, "env": scope["env"] | _env_names(step)}
            body = {k: v for k, v in step.items() if k != "if"}
            found = [*expressions(body), *expressions(step.get("if", ""), condition=True)]
            for expression in found:
                for reference in _references(expression):
                    _check(reference, here, step_scope)
            if "id" in step:
                # An action's outputs are its own; a run step's are what it echoes.
                outputs = None if "uses" in step else _outputs_written(step)
                scope["steps"][step["id"]] = outputs


# ---------------------------------------------------------------------------- the checks fail


def _mutated(name: str, old: str, new: str) -> Workflow:
    workflow = next(w for w in WORKFLOWS if w.name == name)
    assert old in workflow.text, old
    text = workflow.text.replace(old, new)
    return Workflow(workflow.path, text, yaml.safe_load(text))


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        ("train.yml", "steps.submit.outputs.job", "steps.submit.outputs.jobs", "sets no"),
        ("train.yml", "steps.submit.outputs.job", "steps.submitted.outputs.job", "no earlier"),
        ("deploy.yml", "${{ inputs.model_version }}", "${{ inputs.version }}", "no input"),
        ("infra.yml", "stack-name: ${{ matrix.stack }}", "stack-name: ${{ matrix.env }}", "matrix"),
        ("infra.yml", "${{ env.PULUMI_VERSION }}", "${{ env.PULUMI_VER }}", "set nowhere"),
        ("infra.yml", "${{ vars.PULUMI_BACKEND_URL }}", "${{ var.PULUMI_BACKEND_URL }}", "context"),
        ("ci.yml", "${{ runner.os }}", "${{ runnr.os }}", "unknown context"),
    ],
)
def test_a_dangling_reference_fails_the_expression_check(name, old, new, message):
    with pytest.raises(AssertionError, match=message):
        test_expressions_refer_to_things_that_exist(_mutated(name, old, new))


def test_a_wrong_needs_fails_the_graph_check():
    with pytest.raises(AssertionError, match="unknown job"):
        test_needs_name_existing_jobs_without_cycles(
            _mutated("infra.yml", "needs: preview", "needs: previews")
        )
    looped = _mutated("infra.yml", "needs: preview", "needs: up")
    with pytest.raises(AssertionError, match="cycle"):
        test_needs_name_existing_jobs_without_cycles(looped)


def test_a_flag_the_command_lacks_fails_the_command_check():
    with pytest.raises(AssertionError, match="has no --step-pause"):
        test_every_scripts_command_exists_with_the_flags_passed("deploy", ["--step-pause"])
