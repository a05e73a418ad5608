"""Security policy of the GitHub workflows: no stored secret, pinned actions, least permissions,
and the variables they read are exactly what the bootstrap stack outputs."""

from __future__ import annotations

import re

import pytest

from tests.workflows.workflow_files import ROOT, Workflow, expressions, load_workflows, steps

WORKFLOWS = load_workflows()
BY_NAME = {w.name: w for w in WORKFLOWS}

# Every action the workflows use, at the commit its release tag points to (read from the
# actions' own repositories: `git rev-parse vX.Y.Z^{commit}`).
PINS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "actions/setup-python": ("5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "actions/cache": ("27d5ce7f107fe9357f9df03efb73ab90386fccae", "v5.0.5"),
    "azure/login": ("f5d393ae46f8fde4be8b75f32e3fc50e654ad0ca", "v3.0.1"),
    "pulumi/actions": ("8e5e406f4007fca908480587cb9893c07090f58d", "v7.0.0"),
}

# GitHub variable -> the bootstrap stack output that holds its value. Repository variables,
# except AZURE_CLIENT_ID: one per GitHub environment, from deployClientIds.<environment>.
VARIABLES = {
    "AZURE_TENANT_ID": "tenantId",
    "AZURE_SUBSCRIPTION_ID": "subscriptionId",
    "PULUMI_BACKEND_URL": "stateUrl",
    "PULUMI_SECRETS_PROVIDER": "secretsProviderUrl",
    "AZURE_READER_CLIENT_ID": "readerClientId",
    "AZURE_CLIENT_ID": "deployClientIds",
}
ENVIRONMENT_VARIABLES = {"AZURE_CLIENT_ID"}


def test_the_four_workflows_exist():
    assert set(BY_NAME) == {"ci.yml", "infra.yml", "train.yml", "deploy.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_no_stored_secret_and_no_pull_request_target(workflow: Workflow):
    used = set(re.findall(r"\bsecrets\s*(?:\.\s*([A-Za-z_]\w*)|\[)", workflow.text))
    assert used <= {"GITHUB_TOKEN"}, f"{workflow.name} reads secrets {used}"
    assert "pull_request_target" not in workflow.triggers
    assert "workflow_run" not in workflow.triggers  # runs fork code with the base's rights


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_action_is_pinned_to_the_commit_of_a_named_release(workflow: Workflow):
    lines = [line.strip() for line in workflow.text.splitlines()]
    uses = [line for line in lines if re.match(r"^(-\s+)?uses:", line)]
    assert uses, f"{workflow.name} uses no action"
    for line in uses:
        match = re.fullmatch(r"(?:-\s+)?uses:\s+([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # (v[\d.]+)", line)
        assert match, f"{workflow.name}: not pinned to a full SHA with its version: {line}"
        action, sha, version = match.groups()
        assert PINS.get(action) == (sha, version), f"{workflow.name}: {line}"
    parsed = [s["uses"] for job in workflow.jobs.values() for s in steps(job) if "uses" in s]
    assert len(parsed) == len(uses)


def _logs_in_to_azure(job: dict) -> bool:
    return any(str(s.get("uses", "")).startswith("azure/login@") for s in steps(job))


def _comments_on_pull_requests(job: dict) -> bool:
    return any(
        str(s.get("uses", "")).startswith("pulumi/actions@")
        and "comment-on-pr" in (s.get("with") or {})
        for s in steps(job)
    )


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_permissions_are_minimal_per_job(workflow: Workflow):
    top = workflow.data.get("permissions")
    assert top in ({}, {"contents": "read"}), f"{workflow.name}: top-level permissions {top}"
    for job_id, job in workflow.jobs.items():
        granted = job.get("permissions", top)
        assert isinstance(granted, dict), f"{workflow.name}/{job_id}: {granted!r}"
        needed = {"contents": "read"}
        if _logs_in_to_azure(job):
            needed["id-token"] = "write"
        if _comments_on_pull_requests(job):
            needed["pull-requests"] = "write"
        assert granted == needed, f"{workflow.name}/{job_id}"


def test_only_ci_runs_on_every_pull_request_and_only_it_cancels_superseded_runs():
    ci = BY_NAME["ci.yml"]
    assert {"pull_request", "push"} <= set(ci.triggers)
    assert ci.data["concurrency"]["cancel-in-progress"] is True
    for name in ("infra.yml", "train.yml", "deploy.yml"):
        assert BY_NAME[name].data["concurrency"]["cancel-in-progress"] is False, name


def test_jobs_that_change_azure_run_in_a_github_environment():
    """A deploy identity trusts only `environment:<env>` subjects: such jobs must name one."""
    for workflow in WORKFLOWS:
        for job_id, job in workflow.jobs.items():
            if not _logs_in_to_azure(job):
                continue
            client = next(
                s["with"]["client-id"] for s in steps(job) if "azure/login@" in s.get("uses", "")
            )
            if "AZURE_READER_CLIENT_ID" in client:
                assert "environment" not in job, f"{workflow.name}/{job_id}"
            else:
                assert "vars.AZURE_CLIENT_ID" in client
                assert job.get("environment"), f"{workflow.name}/{job_id} has no environment"


def _variables_read() -> set[str]:
    found = set()
    for workflow in WORKFLOWS:
        for expression in expressions(workflow.data):
            found |= set(re.findall(r"\bvars\.([A-Za-z_]\w*)", expression))
    return found


def _bootstrap_outputs(config: dict) -> dict:
    from tests.infra.bootstrap.bootstrap_harness import deploy

    return deploy(config).outputs


def _environments(workflow: Workflow, job: dict) -> set[str]:
    """Every GitHub environment a job can run in: its matrix values or its input's choices."""
    text = str(job["environment"])
    found = set()
    for name in re.findall(r"matrix\.(\w+)", text):
        found |= set(job["strategy"]["matrix"][name])
    for name in re.findall(r"inputs\.(\w+)", text):
        found |= set(workflow.dispatch_inputs[name]["options"])
    found |= set(re.findall(r"'(\w+)'", text))
    return found or {text}


def test_variables_read_are_exactly_the_bootstrap_outputs_by_name():
    assert _variables_read() == set(VARIABLES)
    outputs = _bootstrap_outputs({"githubRepository": "contoso/mnist-ml"})
    assert set(VARIABLES.values()) <= set(outputs)
    for workflow in WORKFLOWS:
        for job_id, job in workflow.jobs.items():
            if "environment" in job:
                # AZURE_CLIENT_ID in each of these environments is deployClientIds.<environment>
                assert _environments(workflow, job) == set(outputs["deployClientIds"]), job_id


def test_readme_tells_which_output_becomes_which_variable():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## CI/CD", 1)[1].split("\n## ", 1)[0]
    for variable, output in VARIABLES.items():
        assert re.search(rf"`{variable}`.*`{output}", section), f"{variable} <- {output}"
    for variable in ENVIRONMENT_VARIABLES:
        assert re.search(rf"`{variable}`.*environment", section)
