"""The stack configuration: declared once in Pulumi.yaml, validated before anything exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.catalog import AZURE_ML_REGIONS, GPU_VM_SIZES
from infra.config import (
    PROJECT_ROOT,
    ConfigError,
    cost_tags,
    load_project,
    read_stack_values,
    resource_names,
    tag_problems,
    validate_config,
)
from tests.infra.infra_harness import deploy, deploy_entry_point, deploy_error

PROJECT = load_project()

# One wrong value per declared key, and what the error must say besides the key's name.
BAD_VALUES: dict[str, tuple[Any, str]] = {
    "project": ("My-Project", "lowercase"),
    "environment": ("production", "1-6"),
    "owner": ("", "must not be empty"),
    "location": ("westmoon", "allowed: australiacentral"),
    "profile": ("public", "allowed: standard, private"),
    "gpuVmSize": ("Standard_K80", "allowed: Standard_NC4as_T4_v3"),
    "gpuMinNodes": (-1, "allowed: 0 to 100"),
    "gpuMaxNodes": ("two", "expected an integer"),
    "gpuPriority": ("Spot", "allowed: Dedicated, LowPriority"),
    "idleSecondsBeforeScaleDown": (5, "allowed: 60 to 86400"),
    "cpuCluster": ("maybe", "expected true or false"),
    "cpuVmSize": ("Standard_NC4as_T4_v3", "allowed: Standard_DS2_v2"),
    "cpuMaxNodes": (0, "allowed: 1 to 100"),
    "dataScientistUsers": (["alice@example.com"], "not an Entra ID object ID"),
    "dataScientistGroups": ('{"not": "a list"}', "expected a list of strings"),
    "logRetentionDays": (7, "allowed: 30 to 730"),
    "privateAddressPrefix": ("8.8.8.0/24", "private IPv4 CIDR"),
    "alertEmails": (["oncall"], "'oncall' is not an e-mail address"),
    "alertServerErrorPercent": (0, "allowed: 1 to 100"),
    "alertLatencyP99Ms": (5, "allowed: 10 to 60000"),
    "alertCpuPercent": (101, "allowed: 1 to 100"),
    "alertMemoryPercent": ("high", "expected an integer"),
    "endpointMinInstances": (0, "allowed: 1 to 20"),
    "endpointMaxInstances": (51, "allowed: 1 to 50"),
    "monthlyBudget": (0, "allowed: 1 to 10000000"),
    "budgetContactEmails": (["cfo@contoso.com", "CFO@contoso.com"], "listed more than once"),
}


def _error(values: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(values, PROJECT)
    return str(caught.value)


def test_every_key_is_declared_with_a_description_and_a_default() -> None:
    document_keys = set(PROJECT.settings)
    assert document_keys == set(BAD_VALUES), "every declared key needs a validation test"
    for setting in PROJECT.settings.values():
        assert len(setting.description) > 20, setting.key
        assert setting.default is not None, setting.key


def test_a_fresh_stack_works_with_just_a_location() -> None:
    cfg = validate_config({"location": "swedencentral"}, PROJECT)
    assert cfg.location == "swedencentral"
    assert cfg.profile == "standard"
    assert (cfg.gpu.vm_size, cfg.gpu.min_nodes, cfg.gpu.max_nodes) == ("Standard_NC4as_T4_v3", 0, 2)
    assert cfg.cpu is not None and cfg.cpu.vm_size == "Standard_DS3_v2"
    assert cfg.tags == {
        "project": "mnist",
        "environment": "dev",
        "owner": "ml-platform",
        "managed-by": "pulumi",
    }


def test_the_declared_defaults_are_valid_on_their_own() -> None:
    defaults = {key: setting.default for key, setting in PROJECT.settings.items()}
    assert validate_config(defaults, PROJECT) == validate_config({}, PROJECT)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_each_wrong_value_names_its_key_and_what_is_allowed(key: str) -> None:
    value, hint = BAD_VALUES[key]
    message = _error({"profile": "standard", key: value})  # whatever a fork's default profile
    assert f"- {key}: " in message
    assert hint in message
    assert message.count("\n  - ") == 1  # only this key is reported


def test_a_retired_vm_size_is_refused_with_the_reason() -> None:
    message = _error({"gpuVmSize": "STANDARD_NC6"})
    assert "gpuVmSize: Standard_NC6 is retired (NC-series (K80)" in message
    assert all(size in message for size in GPU_VM_SIZES)
    assert "NCv3-series (V100) was retired" in _error({"gpuVmSize": "Standard_NC6s_v3"})


def test_max_below_min_names_both_keys() -> None:
    message = _error({"gpuMinNodes": 3, "gpuMaxNodes": 2})
    assert "gpuMaxNodes: 2 is less than gpuMinNodes (3); allowed: 3 to 100" in message


def test_endpoint_max_below_min_is_refused() -> None:
    message = _error({"endpointMinInstances": 3, "endpointMaxInstances": 2})
    assert "endpointMaxInstances: 2 is less than endpointMinInstances (3); allowed: 3 to 50" in (
        message
    )


def test_the_dev_endpoint_scales_from_one_and_prod_from_two() -> None:
    dev = validate_config(read_stack_values("dev", PROJECT), PROJECT)
    prod = validate_config(read_stack_values("prod", PROJECT), PROJECT)
    assert (dev.endpoint.min_instances, dev.endpoint.max_instances) == (1, 3)
    assert (prod.endpoint.min_instances, prod.endpoint.max_instances) == (2, 6)


def test_a_bad_region_lists_the_regions() -> None:
    message = _error({"location": "Atlantis"})
    assert "location: 'atlantis' is not an Azure region" in message
    assert all(region in message for region in AZURE_ML_REGIONS)


def test_the_private_profile_needs_the_cpu_cluster_for_image_builds() -> None:
    message = _error({"profile": "private", "cpuCluster": False})
    assert "cpuCluster: the private profile builds images on the CPU cluster" in message
    assert validate_config({"profile": "standard", "cpuCluster": False}, PROJECT).cpu is None


TYPOS = [("gpuVMSize", "gpuVmSize"), ("gpuMaxnodes", "gpuMaxNodes"), ("locaton", "location")]


@pytest.mark.parametrize(("typo", "declared"), TYPOS)
def test_unknown_keys_are_reported_as_typos_of_the_closest_declared_key(
    typo: str, declared: str
) -> None:
    message = _error({typo: "4"})
    assert (
        f"- {typo}: unknown key for project tf-mnist-azureml (did you mean {declared}?); "
        "the project's keys are declared under `config:` in Pulumi.yaml" in message
    )
    assert f"`pulumi config rm {typo}`" in message


def test_an_unknown_key_like_no_declared_one_lists_them_all() -> None:
    message = _error({"costCentre": "42"})
    assert "costCentre: unknown key for project tf-mnist-azureml (no declared key is" in message
    assert all(key in message for key in PROJECT.settings)


@pytest.mark.parametrize(("typo", "declared"), TYPOS[:2])
@pytest.mark.parametrize("entry_point", [False, True], ids=["main", "entry-point"])
def test_the_program_refuses_a_mistyped_key_before_creating_anything(
    typo: str, declared: str, entry_point: bool
) -> None:
    """Through the mocks' config (``set_all_config``), run as ``main()`` or as the CLI runs
    ``infra/``: the typo is refused, not ignored in favour of the declared default."""
    error, deployment = deploy_error({"location": "westeurope", typo: "4"}, entry_point=entry_point)
    assert isinstance(error, pulumi.RunError)
    assert f"- {typo}: unknown key for project tf-mnist-azureml (did you mean {declared}?)" in (
        str(error)
    )
    assert deployment.registrations == []


def test_the_program_reads_the_config_the_cli_passes_in_pulumi_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Pulumi CLI's language host hands the stack config to the program as JSON in the
    PULUMI_CONFIG variable (string values, arrays as JSON): keys of other namespaces pass,
    declared keys take effect, a mistyped one is refused."""
    config = {"azure-native:location": "westus", f"{PROJECT.name}:gpuMaxNodes": "5"}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    (gpu,) = [
        c
        for c in deploy({}).of_type("azure-native:machinelearningservices:Compute")
        if c.inputs["computeName"] == "gpu-cluster"
    ]
    assert gpu.inputs["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 5

    config[f"{PROJECT.name}:gpuMaxnodes"] = "3"
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    error, deployment = deploy_error({})
    assert "gpuMaxnodes: unknown key for project tf-mnist-azureml (did you mean gpuMaxNodes?)" in (
        str(error)
    )
    assert deployment.registrations == []


def test_preflight_and_the_program_refuse_a_typo_with_the_same_words(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.qa.yaml").write_text(
        f"config:\n  {PROJECT.name}:location: westeurope\n  {PROJECT.name}:gpuVMSize: x\n"
    )
    with pytest.raises(ConfigError) as preflight:
        validate_config(read_stack_values("qa", PROJECT, root=tmp_path), PROJECT)
    error, _ = deploy_error({"location": "westeurope", "gpuVMSize": "x"})
    assert "gpuVMSize: unknown key" in str(error)
    assert str(error).splitlines()[1:] == [f"  - {p}" for p in preflight.value.problems]


GROUP = "0b5c3f2e-7d4a-4e8b-9c1d-2e3f4a5b6c7d"
USER = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (
            {"dataScientistUsers": [USER, USER]},
            f"dataScientistUsers: {USER} is listed more than once (object IDs ignore case)",
        ),
        (
            {"dataScientistGroups": [GROUP, GROUP.upper()]},
            f"dataScientistGroups: {GROUP.upper()} is listed more than once",
        ),
        (
            {"dataScientistUsers": [GROUP], "dataScientistGroups": [GROUP.upper()]},
            f"dataScientistGroups: {GROUP.upper()} is also in dataScientistUsers; "
            "an object ID is either a user or a group",
        ),
        (
            {"dataScientistGroups": ["00000000-0000-0000-0000-000000000000"]},
            "dataScientistGroups: 00000000-0000-0000-0000-000000000000 is the example's "
            "placeholder",
        ),
    ],
    ids=["user-twice", "group-twice-other-case", "user-and-group", "placeholder"],
)
def test_duplicate_principals_are_refused_naming_the_key(
    values: dict[str, list[str]], problem: str
) -> None:
    """Refused, not de-duplicated: a repeated ID is usually one pasted where another was meant,
    and the program would declare two role assignments with the same name."""
    message = _error(values)
    assert f"- {problem}" in message
    assert message.count("\n  - ") == 1


def test_the_program_creates_nothing_for_a_duplicate_principal() -> None:
    error, deployment = deploy_error({"dataScientistGroups": [GROUP, GROUP.upper()]})
    assert "dataScientistGroups: " in str(error)
    assert deployment.registrations == []


def test_owner_is_checked_against_azures_tag_value_limit() -> None:
    assert validate_config({"owner": "o" * 256}, PROJECT).tags["owner"] == "o" * 256
    message = _error({"owner": "o" * 257})
    assert "- owner: 257 characters is too long for an Azure tag value" in message
    assert "allowed: at most 256" in message


def test_tag_names_are_checked_against_azures_rules() -> None:
    declared = PROJECT.settings
    assert tag_problems(cost_tags("mnist", "dev", "ml-platform"), declared) == []
    (forbidden,) = tag_problems({"cost/center": "a"}, declared)
    assert forbidden.startswith("tag 'cost/center': tag name 'cost/center' contains /")
    (too_long,) = tag_problems({"t" * 129: "a"}, declared)
    assert "tag name is 129 characters; Azure allows at most 128 on storage accounts" in too_long
    assert tag_problems({"t" * 128: "v" * 256}, declared) == []
    (named,) = tag_problems({"owner": "v" * 300}, declared)
    assert named.startswith("owner: 300 characters")


def test_all_problems_are_reported_at_once() -> None:
    message = _error({"profile": "x", "location": "y", "gpuMaxNodes": 0})
    assert {"profile", "location", "gpuMaxNodes"} == {
        line.split(":")[0].strip(" -") for line in message.splitlines()[1:]
    }


def test_values_are_normalised_the_way_azure_spells_them() -> None:
    cfg = validate_config(
        {
            "location": "West Europe",
            "gpuVmSize": "standard_nc24ads_a100_v4",
            "gpuPriority": "lowpriority",
            "profile": "PRIVATE",
            "dataScientistGroups": '["0B5C3F2E-7D4A-4E8B-9C1D-2E3F4A5B6C7D"]',
            "cpuCluster": "True",
            "gpuMaxNodes": "4",
        },
        PROJECT,
    )
    assert cfg.location == "westeurope"
    assert cfg.gpu.vm_size == "Standard_NC24ads_A100_v4"
    assert (cfg.gpu.vcpus_per_node, cfg.gpu.gpus_per_node) == (24, 1)
    assert cfg.gpu.priority == "LowPriority"
    assert cfg.profile == "private"
    assert cfg.gpu.max_nodes == 4
    assert cfg.data_scientists[0].object_id == "0b5c3f2e-7d4a-4e8b-9c1d-2e3f4a5b6c7d"
    assert cfg.data_scientists[0].principal_type == "Group"


def test_the_program_validates_before_creating_anything() -> None:
    error, deployment = deploy_error(
        {"gpuVmSize": "Standard_NC6", "gpuMinNodes": 3, "gpuMaxNodes": 1}
    )
    # RunError: Pulumi prints the message alone, without a Python traceback.
    assert isinstance(error, pulumi.RunError)
    assert "gpuVmSize: Standard_NC6 is retired" in str(error)
    assert "gpuMaxNodes: 1 is less than gpuMinNodes (3)" in str(error)
    assert deployment.registrations == []
    assert deploy({}).registrations  # the same recorder sees a valid program's resources


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_example_stack_files_are_valid(stack: str) -> None:
    values = read_stack_values(stack, PROJECT)
    assert values["location"] == "westeurope"
    cfg = validate_config(values, PROJECT)
    assert cfg.environment == stack


def test_a_fully_qualified_stack_name_reads_the_same_file() -> None:
    assert read_stack_values("acme/tf-mnist-azureml/prod", PROJECT) == read_stack_values(
        "prod", PROJECT
    )


@pytest.mark.parametrize(
    "value",
    [
        "oncall@contoso.com,ml@contoso.com",  # `pulumi config set` as one string
        '["oncall@contoso.com", "ml@contoso.com"]',  # as JSON
        ["oncall@contoso.com", "ml@contoso.com"],
    ],
    ids=["comma-separated", "json", "list"],
)
def test_alert_emails_are_read_in_every_form_the_cli_passes(value: object) -> None:
    cfg = validate_config({"alertEmails": value}, PROJECT)
    assert cfg.alert_emails == ("oncall@contoso.com", "ml@contoso.com")


@pytest.mark.parametrize(
    "address", ["oncall", "oncall@contoso", "on call@contoso.com", "a@b@contoso.com"]
)
def test_malformed_budget_contacts_are_refused_naming_the_key(address: str) -> None:
    message = _error({"budgetContactEmails": [address]})
    assert f"- budgetContactEmails: {address!r} is not an e-mail address" in message


def test_the_prod_example_is_private_with_a100_nodes() -> None:
    cfg = validate_config(read_stack_values("prod", PROJECT), PROJECT)
    assert cfg.private and cfg.gpu.vm_size == "Standard_NC24ads_A100_v4"


def test_a_missing_stack_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pulumi stack init qa"):
        read_stack_values("qa", PROJECT, root=tmp_path)


def test_stack_file_keys_of_other_namespaces_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.qa.yaml").write_text(
        "config:\n"
        "  azure-native:location: westus\n"
        f"  {PROJECT.name}:location: northeurope\n"
        f"  {PROJECT.name}:gpuMaxNodes: 3\n"
    )
    assert read_stack_values("qa", PROJECT, root=tmp_path) == {
        "location": "northeurope",
        "gpuMaxNodes": 3,
    }


def test_a_declaration_without_a_default_is_refused(tmp_path: Path) -> None:
    project_file = tmp_path / "Pulumi.yaml"
    project_file.write_text(
        "name: demo\nruntime: python\nconfig:\n"
        "  region:\n    type: string\n    description: where\n"
    )
    with pytest.raises(ConfigError, match=r"region: declaration in Pulumi\.yaml lacks default"):
        load_project(project_file)


def test_the_pulumi_entry_point_runs_the_validated_program() -> None:
    deployment = deploy_entry_point({"location": "uksouth", "profile": "private"})
    workspace = deployment.one("azure-native:machinelearningservices:Workspace")
    assert workspace.inputs["location"] == "uksouth"
    assert workspace.inputs["publicNetworkAccess"] == "Disabled"


def test_pulumi_yaml_runs_the_infra_program_in_the_project_venv() -> None:
    import yaml

    document = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())
    assert document["main"] == "infra/"
    assert document["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": ".venv"},
    }
    assert (PROJECT_ROOT / "infra" / "__main__.py").is_file()


@pytest.mark.parametrize("project", ["ab", "visionteam"])
@pytest.mark.parametrize("environment", ["d", "prod99"])
def test_resource_names_fit_azure_length_limits(project: str, environment: str) -> None:
    names = resource_names(project, environment, "a1b2c3")
    assert 3 <= len(names.storage_account) <= 24 and names.storage_account.isalnum()
    assert 3 <= len(names.key_vault) <= 24
    assert 5 <= len(names.container_registry) <= 50 and names.container_registry.isalnum()
    assert 3 <= len(names.workspace) <= 33
    for name in (names.storage_account, names.key_vault, names.workspace, names.log_analytics):
        assert name.endswith("a1b2c3"), name
