"""The stack configuration: declared once in ``Pulumi.yaml``, validated here before anything exists.

``validate_config`` is a pure function (no Pulumi runtime) shared by the Pulumi program, the
``preflight`` command and the tests. Defaults come from the declarations in ``Pulumi.yaml``, so a
value missing from the stack means the declared default, whoever reads it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.catalog import AZURE_ML_REGIONS, CPU_VM_SIZES, GPU_VM_SIZES, RETIRED_VM_SIZES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILE = PROJECT_ROOT / "Pulumi.yaml"

PROFILES: dict[str, str] = {
    "standard": "managed network isolation; public endpoints protected by Entra ID",
    "private": "public network access off; private endpoints and private DNS zones",
}
PRIORITIES: tuple[str, ...] = ("Dedicated", "LowPriority")
GPU_CLUSTER_NAME = "gpu-cluster"
CPU_CLUSTER_NAME = "cpu-cluster"
DATASETS_CONTAINER = "datasets"
DATASETS_DATASTORE = "datasets"

# An address an e-mail receiver accepts: one @, a dot in the domain, no spaces or commas.
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_PLACEHOLDER_GUID = "00000000-0000-0000-0000-000000000000"
PROJECT_NAME = re.compile(r"^[a-z][a-z0-9]{1,9}$")
ENVIRONMENT_NAME = re.compile(r"^[a-z0-9]{1,6}$")
_TYPES = ("string", "integer", "boolean", "array")

# Azure's tag limits (Azure Resource Manager, "Use tags to organize your Azure resources"):
# values up to 256 characters; names up to 512, but up to 128 on storage accounts, and every
# taggable resource here (the storage account included) gets the same tags; names must not
# contain any of < > % & \ ? /.
TAG_VALUE_MAX = 256
TAG_NAME_MAX = 128
TAG_NAME_FORBIDDEN = "<>%&\\?/"


class ConfigError(ValueError):
    """One or more configuration values are wrong; each problem names its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "invalid stack configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class Setting:
    """One config key as ``Pulumi.yaml`` declares it."""

    key: str
    type: str
    description: str
    default: Any


@dataclass(frozen=True)
class ProjectFile:
    """The Pulumi project name and its declared config keys."""

    name: str
    settings: Mapping[str, Setting]
    source: Path = PROJECT_FILE


def load_project(path: Path = PROJECT_FILE) -> ProjectFile:
    """Read the project name and the config declarations from ``Pulumi.yaml``."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from exc
    if not isinstance(document, dict) or not isinstance(document.get("name"), str):
        raise ConfigError([f"{path} has no project `name`"])
    problems: list[str] = []
    settings: dict[str, Setting] = {}
    for key, decl in (document.get("config") or {}).items():
        if not isinstance(decl, dict):
            problems.append(f"{key}: declare it as a mapping with type, description and default")
            continue
        missing = [part for part in ("type", "description", "default") if part not in decl]
        if missing:
            problems.append(f"{key}: declaration in {path.name} lacks {', '.join(missing)}")
            continue
        if decl["type"] not in _TYPES:
            problems.append(f"{key}: unknown type {decl['type']!r}; allowed: {', '.join(_TYPES)}")
            continue
        settings[key] = Setting(key, decl["type"], str(decl["description"]), decl["default"])
    if problems:
        raise ConfigError(problems)
    return ProjectFile(document["name"], settings, path)


@dataclass(frozen=True)
class ClusterSpec:
    """An AmlCompute cluster as the configuration asks for it."""

    name: str
    vm_size: str
    vcpus_per_node: int
    gpus_per_node: int
    min_nodes: int
    max_nodes: int
    priority: str
    idle_seconds: int

    @property
    def idle_time_before_scale_down(self) -> str:
        """The idle time as the ARM API wants it (ISO 8601 duration)."""
        return f"PT{self.idle_seconds}S"


@dataclass(frozen=True)
class Principal:
    """A user or group that gets the data scientist roles."""

    object_id: str
    principal_type: str  # "User" or "Group", as Azure RBAC spells it


@dataclass(frozen=True)
class AlertThresholds:
    """When the online endpoint alerts fire (each value from its ``alert*`` config key)."""

    server_error_percent: int  # alertServerErrorPercent: share of 5xx answers
    latency_p99_ms: int  # alertLatencyP99Ms: 99th-percentile request duration
    cpu_percent: int  # alertCpuPercent: average CPU of a deployment instance
    memory_percent: int  # alertMemoryPercent: average memory of a deployment instance


@dataclass(frozen=True)
class EndpointScale:
    """Instances of the online deployment (endpointMinInstances, endpointMaxInstances): the
    rollout's autoscale setting keeps the deployment between them."""

    min_instances: int
    max_instances: int


@dataclass(frozen=True)
class InfraConfig:
    """The validated configuration of one stack."""

    project: str
    environment: str
    owner: str
    location: str
    profile: str
    gpu: ClusterSpec
    cpu: ClusterSpec | None
    data_scientists: tuple[Principal, ...]
    log_retention_days: int
    private_address_prefix: str
    alert_emails: tuple[str, ...]
    alerts: AlertThresholds
    endpoint: EndpointScale
    monthly_budget: int
    budget_emails: tuple[str, ...]

    @property
    def private(self) -> bool:
        return self.profile == "private"

    @property
    def tags(self) -> dict[str, str]:
        """Tags for every taggable resource (cost tracking)."""
        return cost_tags(self.project, self.environment, self.owner)

    @property
    def clusters(self) -> tuple[ClusterSpec, ...]:
        return (self.gpu,) if self.cpu is None else (self.gpu, self.cpu)


def cost_tags(project: str, environment: str, owner: str) -> dict[str, str]:
    """The tags of every taggable resource; each is named after the config key it comes from."""
    return {
        "project": project,
        "environment": environment,
        "owner": owner,
        "managed-by": "pulumi",
    }


def tag_problems(tags: Mapping[str, str], declared: Collection[str]) -> list[str]:
    """Azure's limits on tag names and values, each problem named after the config key that
    sets the tag (``declared``: the project's config keys) or, for a fixed tag, the tag."""
    problems: list[str] = []
    for name, value in tags.items():
        where = name if name in declared else f"tag {name!r}"
        bad = sorted({c for c in name if c in TAG_NAME_FORBIDDEN})
        if bad:
            problems.append(
                f"{where}: tag name {name!r} contains {' '.join(bad)}; Azure tag names must "
                f"not contain any of {' '.join(TAG_NAME_FORBIDDEN)}"
            )
        if len(name) > TAG_NAME_MAX:
            problems.append(
                f"{where}: tag name is {len(name)} characters; Azure allows at most "
                f"{TAG_NAME_MAX} on storage accounts"
            )
        if len(value) > TAG_VALUE_MAX:
            problems.append(
                f"{where}: {len(value)} characters is too long for an Azure tag value "
                f"(the {name!r} tag on every resource); allowed: at most {TAG_VALUE_MAX}"
            )
    return problems


def unknown_key_problems(keys: Collection[str], project: ProjectFile) -> list[str]:
    """One problem per key that ``Pulumi.yaml`` does not declare (a typo, mostly), naming the
    closest declared key; the Pulumi program and ``preflight`` both refuse such keys here."""
    lowered = {key.lower(): key for key in project.settings}
    problems = []
    for key in keys:
        if key in project.settings:
            continue
        close = difflib.get_close_matches(key.lower(), list(lowered), n=1)
        guess = (
            f"did you mean {lowered[close[0]]}?"
            if close
            else f"no declared key is close; declared: {_allowed(sorted(project.settings))}"
        )
        problems.append(
            f"{key}: unknown key for project {project.name} ({guess}); the project's keys are "
            f"declared under `config:` in {project.source.name}. Rename or remove it "
            f"(`pulumi config rm {key}`)"
        )
    return problems


def _allowed(values: Any) -> str:
    return ", ".join(str(v) for v in values)


class Reader:
    """Coerces raw values (strings from Pulumi, or YAML scalars) and collects problems."""

    def __init__(self, values: Mapping[str, Any], project: ProjectFile) -> None:
        self.values = values
        self.project = project
        self.problems: list[str] = []

    def raw(self, key: str) -> Any:
        value = self.values.get(key)
        return self.project.settings[key].default if value is None else value

    def string(self, key: str) -> str:
        value = self.raw(key)
        if isinstance(value, (dict, list)):
            self.problems.append(f"{key}: expected a string, got {json.dumps(value)}")
            return ""
        return str(value).strip()

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw(key)
        try:
            if isinstance(value, bool):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError):
            self.problems.append(f"{key}: expected an integer, got {value!r}")
            return low
        if not low <= number <= high:
            self.problems.append(f"{key}: {number} is out of range; allowed: {low} to {high}")
        return number

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "false"):
            return text == "true"
        self.problems.append(f"{key}: expected true or false, got {value!r}")
        return False

    def strings(self, key: str) -> list[str]:
        value = self.raw(key)
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError:
                value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problems.append(f"{key}: expected a list of strings, got {value!r}")
            return []
        return [v.strip() for v in value]

    def choice(self, key: str, allowed: tuple[str, ...] | list[str]) -> str:
        value = self.string(key)
        matches = [a for a in allowed if a.lower() == value.lower()]
        if not matches:
            self.problems.append(f"{key}: {value!r} is not allowed; allowed: {_allowed(allowed)}")
            return allowed[0]
        return matches[0]

    def vm_size(self, key: str, catalog: Mapping[str, Any]) -> str:
        value = self.string(key)
        for name in catalog:
            if name.lower() == value.lower():
                return name
        for name, why in RETIRED_VM_SIZES.items():
            if name.lower() == value.lower():
                self.problems.append(
                    f"{key}: {name} is retired ({why}); allowed: {_allowed(catalog)}"
                )
                return next(iter(catalog))
        self.problems.append(
            f"{key}: {value!r} is not a supported size; allowed: {_allowed(catalog)}"
        )
        return next(iter(catalog))


def _principals(read: Reader) -> list[Principal]:
    """The data scientists, each object ID once: a duplicate (object IDs are case-insensitive)
    or an ID listed as both a user and a group is refused rather than dropped, since it is
    usually a pasted ID where another was meant, and only the person can tell which."""
    principals: list[Principal] = []
    listed_in: dict[str, list[str]] = {}  # object ID -> the keys that list it
    for key, kind in (("dataScientistUsers", "User"), ("dataScientistGroups", "Group")):
        for object_id in read.strings(key):
            if not GUID.match(object_id):
                read.problems.append(
                    f"{key}: {object_id!r} is not an Entra ID object ID (a GUID; "
                    "`az ad user show --id <name> --query id -o tsv` prints a user's)"
                )
                continue
            if object_id.lower() == _PLACEHOLDER_GUID:
                read.problems.append(
                    f"{key}: {object_id} is the example's placeholder, not a user or group; "
                    "put the real object ID there"
                )
                continue
            keys = listed_in.setdefault(object_id.lower(), [])
            if key in keys:
                read.problems.append(
                    f"{key}: {object_id} is listed more than once (object IDs ignore case); "
                    "list each principal once"
                )
            elif keys:
                read.problems.append(
                    f"{key}: {object_id} is also in {keys[0]}; an object ID is either a user "
                    "or a group: keep it only in the list of its type"
                )
            else:
                principals.append(Principal(object_id.lower(), kind))
            keys.append(key)
    return principals


def _emails(read: Reader, key: str) -> tuple[str, ...]:
    """E-mail addresses from a list key, each once (addresses ignore case)."""
    found: list[str] = []
    for address in read.strings(key):
        if not _EMAIL.match(address):
            read.problems.append(
                f"{key}: {address!r} is not an e-mail address (name@domain); "
                "list one address per entry"
            )
        elif address.lower() in (a.lower() for a in found):
            read.problems.append(f"{key}: {address} is listed more than once; list it once")
        else:
            found.append(address)
    return tuple(found)


def validate_config(values: Mapping[str, Any], project: ProjectFile | None = None) -> InfraConfig:
    """Turn raw config values (key -> value; missing means the declared default) into an
    ``InfraConfig``, or raise ``ConfigError`` naming every wrong key and its allowed values.

    ``values`` must hold every key the stack sets in the project's namespace (not only the
    declared ones): an undeclared key is refused, never ignored."""
    project = project or load_project()
    read = Reader(values, project)
    read.problems += unknown_key_problems(list(values), project)

    name = read.string("project")
    if not PROJECT_NAME.match(name):
        read.problems.append(
            f"project: {name!r} must be 2-10 lowercase letters or digits starting with a letter "
            "(it goes into storage and registry names)"
        )
    environment = read.string("environment")
    if not ENVIRONMENT_NAME.match(environment):
        read.problems.append(
            f"environment: {environment!r} must be 1-6 lowercase letters or digits"
        )
    owner = read.string("owner")
    if not owner:
        read.problems.append("owner: must not be empty (it is the cost-tracking tag)")

    location = read.string("location").lower().replace(" ", "")
    if location not in AZURE_ML_REGIONS:
        read.problems.append(
            f"location: {location!r} is not an Azure region with Azure Machine Learning; "
            f"allowed: {_allowed(AZURE_ML_REGIONS)}"
        )
    profile = read.choice("profile", tuple(PROFILES))
    idle = read.integer("idleSecondsBeforeScaleDown", 60, 86_400)

    gpu_size = read.vm_size("gpuVmSize", GPU_VM_SIZES)
    gpu_min = read.integer("gpuMinNodes", 0, 100)
    gpu_max = read.integer("gpuMaxNodes", 1, 100)
    if gpu_max < gpu_min:
        read.problems.append(
            f"gpuMaxNodes: {gpu_max} is less than gpuMinNodes ({gpu_min}); "
            f"allowed: {gpu_min} to 100"
        )
    gpu = ClusterSpec(
        name=GPU_CLUSTER_NAME,
        vm_size=gpu_size,
        vcpus_per_node=GPU_VM_SIZES[gpu_size].vcpus,
        gpus_per_node=GPU_VM_SIZES[gpu_size].gpus,
        min_nodes=gpu_min,
        max_nodes=gpu_max,
        priority=read.choice("gpuPriority", PRIORITIES),
        idle_seconds=idle,
    )

    cpu: ClusterSpec | None = None
    cpu_size = read.vm_size("cpuVmSize", CPU_VM_SIZES)
    cpu_max = read.integer("cpuMaxNodes", 1, 100)
    if read.boolean("cpuCluster"):
        cpu = ClusterSpec(
            name=CPU_CLUSTER_NAME,
            vm_size=cpu_size,
            vcpus_per_node=CPU_VM_SIZES[cpu_size].vcpus,
            gpus_per_node=0,
            min_nodes=0,
            max_nodes=cpu_max,
            priority="Dedicated",
            idle_seconds=idle,
        )
    elif profile == "private":
        read.problems.append(
            "cpuCluster: the private profile builds images on the CPU cluster "
            "(the registry has no public endpoint); allowed: true"
        )

    principals = _principals(read)

    retention = read.integer("logRetentionDays", 30, 730)
    prefix = read.string("privateAddressPrefix")
    try:
        network = ipaddress.ip_network(prefix, strict=True)
        if network.version != 4 or not 16 <= network.prefixlen <= 27 or not network.is_private:
            raise ValueError
    except ValueError:
        read.problems.append(
            f"privateAddressPrefix: {prefix!r} must be a private IPv4 CIDR block "
            "from /16 to /27 (e.g. 10.42.0.0/24)"
        )

    alert_emails = _emails(read, "alertEmails")
    alerts = AlertThresholds(
        server_error_percent=read.integer("alertServerErrorPercent", 1, 100),
        latency_p99_ms=read.integer("alertLatencyP99Ms", 10, 60_000),
        cpu_percent=read.integer("alertCpuPercent", 1, 100),
        memory_percent=read.integer("alertMemoryPercent", 1, 100),
    )
    endpoint_min = read.integer("endpointMinInstances", 1, 20)
    endpoint_max = read.integer("endpointMaxInstances", 1, 50)
    if endpoint_max < endpoint_min:
        read.problems.append(
            f"endpointMaxInstances: {endpoint_max} is less than endpointMinInstances "
            f"({endpoint_min}); allowed: {endpoint_min} to 50"
        )
    monthly_budget = read.integer("monthlyBudget", 1, 10_000_000)
    budget_emails = _emails(read, "budgetContactEmails")

    read.problems += tag_problems(cost_tags(name, environment, owner), project.settings)
    if read.problems:
        raise ConfigError(read.problems)
    return InfraConfig(
        project=name,
        environment=environment,
        owner=owner,
        location=location,
        profile=profile,
        gpu=gpu,
        cpu=cpu,
        data_scientists=tuple(principals),
        log_retention_days=retention,
        private_address_prefix=prefix,
        alert_emails=alert_emails,
        alerts=alerts,
        endpoint=EndpointScale(endpoint_min, endpoint_max),
        monthly_budget=monthly_budget,
        budget_emails=budget_emails,
    )


@dataclass(frozen=True)
class ResourceNames:
    """Azure names of the stack's resources.

    Names that Azure keeps after deletion (soft-deleted key vaults and workspaces, Log Analytics
    workspaces) or that must be globally unique carry ``suffix``: a random string kept in the
    stack state, so ``pulumi destroy`` then ``pulumi up`` creates fresh names instead of
    colliding with the soft-deleted ones.
    """

    resource_group: str
    storage_account: str
    key_vault: str
    container_registry: str
    log_analytics: str
    app_insights: str
    workspace: str
    compute_identity: str
    virtual_network: str


def resource_names(project: str, environment: str, suffix: str) -> ResourceNames:
    """Derive every Azure name from the project, environment and the stack's random suffix."""
    compact = f"{project}{environment}{suffix}"
    return ResourceNames(
        resource_group=f"rg-{project}-{environment}",
        storage_account=f"st{compact}"[:24],
        key_vault=f"kv{compact}"[:24],
        container_registry=f"cr{compact}"[:50],
        log_analytics=f"log-{project}-{environment}-{suffix}",
        app_insights=f"appi-{project}-{environment}-{suffix}",
        workspace=f"mlw-{project}-{environment}-{suffix}"[:33],
        compute_identity=f"id-{project}-{environment}-compute",
        virtual_network=f"vnet-{project}-{environment}",
    )


def read_stack_values(
    stack: str, project: ProjectFile, root: Path = PROJECT_ROOT
) -> dict[str, Any]:
    """The project's keys (namespace stripped) from ``Pulumi.<stack>.yaml``, read offline.

    Used where the Pulumi CLI is not needed (``preflight``); the program itself gets the same
    values from the CLI (``stack_values``). Both strip the namespace with
    ``namespace_values`` and validate with ``validate_config``.
    """
    path = root / f"Pulumi.{stack.split('/')[-1]}.yaml"  # org/project/stack -> stack
    if not path.is_file():
        raise ConfigError(
            [
                f"stack {stack!r} has no config file {path.name}: create it with "
                f"`pulumi stack init {stack}` and `pulumi config set location <region>`"
            ]
        )
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path.name} is not valid YAML: {exc}"]) from exc
    if not isinstance(document, dict):
        raise ConfigError([f"{path.name}: expected a mapping with a `config` section"])
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError([f"{path.name}: `config` must be a mapping of key: value"])
    return namespace_values(config, project)


def stack_values(project: ProjectFile) -> dict[str, Any]:
    """Every key of ``project``'s namespace in this Pulumi run (namespace stripped), declared or
    not, so that validation can refuse a mistyped one.

    Read from where ``pulumi.Config`` looks keys up: the values set in the runtime (the Pulumi
    CLI's Python executor loads the stack config there from the ``PULUMI_CONFIG`` variable;
    ``pulumi.runtime.set_all_config`` under mocks) over that variable itself. ``pulumi.Config``
    can only look a known key up, so a mistyped one would be invisible through it."""
    from pulumi.runtime import config as runtime_config  # only inside a Pulumi program

    config = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secrets = [key for key in config if runtime_config.is_config_secret(key)]
    return namespace_values(config, project, secrets)


def namespace_values(
    config: Mapping[str, Any], project: ProjectFile, secret_keys: Collection[str] = ()
) -> dict[str, Any]:
    """Every key of the project's namespace (``<project>:<key>``, namespace stripped), declared
    or not, so that ``validate_config`` can refuse the undeclared ones; keys of other
    namespaces (provider settings such as ``azure-native:location``) are left out.

    ``secret_keys``: full keys that hold secrets (a stack file marks them ``secure:``)."""
    prefix = f"{project.name}:"
    values: dict[str, Any] = {}
    for full_key, value in config.items():
        if not str(full_key).startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        if full_key in secret_keys or (isinstance(value, dict) and "secure" in value):
            raise ConfigError([f"{key}: is a secret; this project declares none"])
        values[key] = value
    return values
