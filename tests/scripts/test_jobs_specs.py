"""The job, data and environment specs: valid for azure-ai-ml's own loaders, one definition,
and in agreement with the training script and the other specs. No Azure, no training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import load_component, load_data, load_environment, load_job

from scripts import UserError
from scripts.azureml.assets import registered_model_name
from scripts.azureml.jobs import staged_code
from scripts.jobspec import (
    DATA_SPECS_DIR,
    ENVIRONMENTS_DIR,
    JOBS_DIR,
    REPO_ROOT,
    load_spec,
    parse_sets,
)
from scripts.localjob import local_plan, render_command

JOB_SPECS = sorted(JOBS_DIR.glob("*.yml"))
COMPONENT = JOBS_DIR / "components" / "train.yml"


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_is_a_spec_for_every_training_method() -> None:
    assert {p.stem for p in JOB_SPECS} >= {
        "single",
        "multi_worker",
        # fork:begin parameter_server
        "parameter_server",
        # fork:end parameter_server
        # fork:begin horovod
        "horovod",
        # fork:end horovod
        "sweep",
    }


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_every_job_spec_loads_with_azure_ai_mls_own_loader(path: Path) -> None:
    job = load_job(path)  # what `az ml job create -f` validates
    assert job.type == "pipeline"
    assert raw(path)["$schema"].endswith("/pipelineJob.schema.json")
    assert job.experiment_name == "tf-mnist"


def test_the_component_data_and_environment_specs_load_with_their_loaders() -> None:
    component = load_component(COMPONENT)
    assert component.type == "command"
    assert set(component.outputs) == {"run"}
    data = load_data(DATA_SPECS_DIR / "mnist.yml")
    assert (data.name, data.type) == ("mnist", "uri_folder")
    environment = load_environment(ENVIRONMENTS_DIR / "train" / "environment.yml")
    assert environment.name == "tf-mnist-train"
    assert environment.image.startswith("mcr.microsoft.com/azureml/")
    assert re.search(r":\d{8}\.v\d+$", environment.image), "pin the base image to a dated tag"


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_every_job_runs_the_one_training_component(path: Path) -> None:
    """Variants add distribution, nodes or a search; the command lives only in the component."""
    (step,) = raw(path)["jobs"].values()
    reference = step.get("component") or step.get("trial")
    assert (path.parent / reference).resolve() == COMPONENT.resolve()
    assert "command" not in step and "code" not in step
    assert step["outputs"] == {"run": "${{parent.outputs.run}}"}
    assert step["inputs"]["mnist"]["path"] == "azureml:mnist@latest"


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_no_spec_names_a_compute(path: Path) -> None:
    """The cluster name is project identity: `submit` takes it from the Pulumi stack."""
    text = path.read_text()
    assert not re.search(r"^\s*(compute|default_compute)\s*:", text, re.MULTILINE)


def step(name: str):
    return load_spec(JOBS_DIR / f"{name}.yml").step


def test_distributions_are_declared_in_the_specs() -> None:
    assert step("single").distribution is None
    multi = step("multi_worker")
    assert (multi.distribution.type, multi.distribution.worker_count) == ("tensorflow", 2)
    assert multi.resources.instance_count == 2


# fork:begin parameter_server
def test_the_parameter_server_spec_declares_its_cluster() -> None:
    ps = step("parameter_server").distribution
    # worker 0 becomes the chief (Azure ML names no chief): chief + 2 workers + 1 ps
    assert (ps.type, ps.worker_count, ps.parameter_server_count) == ("tensorflow", 3, 1)


# fork:end parameter_server
# fork:begin horovod
def test_the_horovod_spec_runs_mpi_in_the_horovod_environment() -> None:
    horovod = step("horovod")
    assert (horovod.distribution.type, horovod.distribution.process_count_per_instance) == (
        "mpi",
        1,
    )
    assert horovod.environment.removeprefix("azureml:") == "tf-mnist-horovod@latest"


# fork:end horovod
def test_the_sweep_searches_the_articles_hyperparameters_with_early_termination() -> None:
    sweep = step("sweep")
    assert set(sweep.search_space) == {
        "batch_size",
        "first_layer_neurons",
        "second_layer_neurons",
        "learning_rate",
    }
    assert (sweep.objective.goal, sweep.objective.primary_metric) == ("maximize", "test_accuracy")
    assert sweep.early_termination.type == "bandit"
    assert sweep.limits.max_total_trials >= sweep.limits.max_concurrent_trials


def test_the_command_and_the_training_script_agree() -> None:
    """Every flag the component passes is one training/train.py parses, with its type."""
    from training.config import parse_args

    plan = local_plan(load_spec(JOBS_DIR / "single.yml"))
    values = {
        "model": "dnn",
        "mnist": "/data/mnist",
        "epochs": "2",
        "batch_size": "128",
        "first_layer_neurons": "200",
        "second_layer_neurons": "50",
        "learning_rate": "0.001",
        "seed": "7",
    }
    assert set(values) == set(plan.inputs)
    command = render_command(plan.command_template, values, {"run": "/out"})
    argv = command.split()
    assert argv[:3] == ["python", "-m", "training.train"]
    config = parse_args(argv[3:])
    assert (config.model, config.data_folder, config.epochs) == ("dnn", "/data/mnist", 2)
    assert config.batch_size == 128
    assert (config.first_layer_neurons, config.second_layer_neurons) == (200, 50)
    assert (config.learning_rate, config.seed, config.output_dir) == (0.001, 7, "/out")
    # unset hyperparameters fall back to train.py's defaults (the defaults live there only)
    bare = parse_args(render_command(plan.command_template, {}, {"run": "/out"}).split()[3:])
    assert bare.epochs == parse_args([]).epochs and bare.data_folder is None
    assert bare.model == "dnn"
    # the model input chooses the architecture, and with it that model's own defaults
    cnn = parse_args(
        render_command(plan.command_template, {"model": "cnn"}, {"run": "/o"}).split()[3:]
    )
    assert (cnn.model, cnn.epochs, cnn.first_layer_neurons) == ("cnn", 4, None)


def test_the_data_asset_is_the_mirror_training_downloads_from() -> None:
    from training.data import MIRRORS

    assert raw(DATA_SPECS_DIR / "mnist.yml")["path"] == MIRRORS[0]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[re.sub(r"\[.*\]", "", name).removesuffix("-cpu")] = version
    return pins


def test_the_training_image_pins_what_the_tests_run() -> None:
    conda = raw(ENVIRONMENTS_DIR / "train" / "conda.yml")
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    image = _pins(pip)
    local = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert all("==" in line for line in pip), "pin every package"
    assert "tensorflow[and-cuda]==" in " ".join(pip)  # CUDA and cuDNN come as pinned wheels
    for package in ("tensorflow", "matplotlib", "tqdm", "tf2onnx", "onnx", "onnxruntime"):
        assert image[package] == local[package], package
    assert {"mlflow", "azureml-mlflow", "keras", "numpy"} <= set(image)


def test_models_are_registered_under_the_name_serving_deploys() -> None:
    """serving/deployment.yml's `model:` names the model once: `register` (and the demo) read
    it there; the no-code and batch deployments and the deploy workflow must say the same."""
    assert registered_model_name() == "tf-mnist"
    for spec in ("serving/mlflow-deployment.yml", "serving/batch/deployment.yml"):
        assert raw(REPO_ROOT / spec)["model"] == "azureml:tf-mnist@latest", spec
    # fork:begin github_actions
    workflow = raw(REPO_ROOT / ".github" / "workflows" / "deploy.yml")
    assert workflow["env"]["MODEL_NAME"] == "tf-mnist"
    # fork:end github_actions


def test_the_model_name_follows_the_deployment_spec(tmp_path: Path) -> None:
    spec = tmp_path / "deployment.yml"
    text = (REPO_ROOT / "serving" / "deployment.yml").read_text()
    spec.write_text(text.replace("azureml:tf-mnist@latest", "azureml:digits-cnn:3"))
    assert registered_model_name(spec) == "digits-cnn"
    (tmp_path / "model").mkdir()  # a model uploaded with the deployment: nothing registered
    spec.write_text(text.replace("model: azureml:tf-mnist@latest", "model: {path: ./model}"))
    with pytest.raises(UserError, match=r"not a registered model .* register --name"):
        registered_model_name(spec)


def test_azure_ml_uploads_only_the_training_package_as_the_jobs_code() -> None:
    """What the SDK would upload from the repository root (.amlignore applied) is training/'s
    Python files, and ``submit``'s faster staged copy holds exactly those files."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    code = (COMPONENT.parent / load_component(COMPONENT).code).resolve()
    assert code == REPO_ROOT
    files = get_upload_files_from_folder(code, prefix="", ignore_file=get_ignore_file(code))
    uploaded = {Path(local).resolve().relative_to(REPO_ROOT).as_posix() for local, _ in files}
    assert {"training/train.py", "training/data.py", "training/distribute.py"} <= uploaded
    assert all(p.startswith("training/") and p.endswith(".py") for p in uploaded), uploaded

    spec = load_spec(JOBS_DIR / "single.yml")
    with staged_code(spec):
        staged = Path(spec.component.code)
        assert staged != REPO_ROOT and staged.name == REPO_ROOT.name
        copied = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert copied == uploaded
    assert Path(spec.component.code) == Path("../../..")  # restored after the upload


# ---------------------------------------------------------------------------- --set


def test_set_overrides_an_input_of_the_step() -> None:
    spec = load_spec(
        JOBS_DIR / "multi_worker.yml",
        parse_sets(["inputs.epochs=2", "inputs.learning_rate=1e-3"]),
    )
    assert spec.step.inputs["epochs"]._data == 2
    assert local_plan(spec).inputs["learning_rate"] == "0.001"


def test_set_on_a_data_input_replaces_its_path_with_an_absolute_one(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    spec = load_spec(JOBS_DIR / "single.yml", parse_sets(["inputs.mnist=mnist"]), cwd=tmp_path)
    data = spec.step.inputs["mnist"]._data
    assert (data.type, data.path) == ("uri_folder", str(tmp_path / "mnist"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("inputs.epoch=2", "the job has no input 'epoch'"),
        ("inputs.epochs=two", "expected an integer"),
        ("inputs.epochs=0", "must be at least 1"),
        ("inputs.learning_rate=fast", "expected a number"),
        ("epochs", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_are_refused_with_the_reason(setting: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_spec(JOBS_DIR / "single.yml", parse_sets([setting]))


def test_a_missing_or_invalid_spec_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no job spec at"):
        load_spec(tmp_path / "nope.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("type: command\ncommand: echo\ninputs: {a: {type: integer, default: 1}}\n")
    with pytest.raises(UserError, match="not a valid Azure ML job spec"):
        load_spec(broken)


# ---------------------------------------------------------------------------- local plan


def test_a_workspace_data_input_is_left_to_trainings_own_lookup_locally() -> None:
    plan = local_plan(load_spec(JOBS_DIR / "single.yml"))
    assert plan.inputs["mnist"] is None  # training reads MNIST_DATA_DIR or its cache
    assert any("MNIST_DATA_DIR" in note for note in plan.notes)
    assert plan.code_dir == REPO_ROOT
    assert plan.outputs == ["run"]


def test_a_sweep_does_not_run_locally() -> None:
    with pytest.raises(UserError, match="only Azure ML runs"):
        local_plan(load_spec(JOBS_DIR / "sweep.yml"))


def test_render_command_fills_placeholders_and_drops_unset_optional_parts() -> None:
    template = (
        "python -m training.train $[[--data-folder ${{inputs.data}}]] "
        "$[[--epochs ${{inputs.epochs}}]] --output-dir ${{outputs.run}}"
    )
    command = render_command(template, {"data": None, "epochs": "3"}, {"run": "/o u/t"})
    assert command == "python -m training.train --epochs 3 --output-dir '/o u/t'"
    with pytest.raises(UserError, match=r"inputs\.data is required"):
        render_command("train ${{inputs.data}}", {"data": None}, {})
    with pytest.raises(UserError, match="a local run cannot fill"):
        render_command("train ${{search_space.x}}", {}, {})
