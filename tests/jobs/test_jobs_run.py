"""``python -m scripts run JOB.yml``: the job specs run on this machine as Azure ML runs them.

The slow tests train for one epoch on real MNIST (the lead's tests already hold distributed
runs to >= 97% over more epochs); here the point is that the YAML, the launcher and the
training script agree: each spec runs, with the processes its distribution declares, and
leaves a model and metrics in its output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import UserError
from scripts.jobspec import JOBS_DIR, load_spec, local_plan, parse_sets
from scripts.localjob import run_plan, tasks_for


def run_job(run_python, tmp_path: Path, spec: str, *sets: str):
    args = ["-m", "scripts", "run", f"training/jobs/{spec}.yml", "--outputs", str(tmp_path)]
    args += ["--name", "job", "--set", "inputs.epochs=1"]
    for setting in sets:
        args += ["--set", setting]
    return run_python(*args, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "distribution", "processes"),
    [
        ("single", "single", ["main"]),
        ("multi_worker", "multi_worker", ["worker 0", "worker 1"]),
        ("parameter_server", "parameter_server", ["worker 0", "worker 1", "worker 2", "ps 0"]),
    ],
)
def test_run_trains_the_spec_locally(
    run_python, mnist_dir: Path, tmp_path: Path, spec: str, distribution: str, processes: list
) -> None:
    # the single-node run gets a local data folder; the others fall back to training's own
    # lookup ($MNIST_DATA_DIR), as a workspace data asset does locally
    data = [f"inputs.mnist={mnist_dir}"] if spec == "single" else []
    result = run_job(run_python, tmp_path, spec, *data)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f"job job: {len(processes)} process(es)" in result.stdout
    if data:
        assert f"--data-folder {mnist_dir.resolve()}" in result.stdout  # the runner resolves paths
    else:
        assert "note: inputs.mnist is 'mnist@latest' in the workspace" in result.stdout
    if len(processes) > 1:  # one process per TF task, its lines prefixed with the task
        assert all(f"[{name}] " in result.stdout for name in processes)
    output = tmp_path / "job" / "run"
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["distribution"] == distribution
    assert metrics["epochs"] == 1
    assert metrics["test_accuracy"] > 0.9
    assert (output / "model" / "MLmodel").is_file()
    assert (output / "model" / "data" / "model.keras").is_file()
    assert (output / "training_curves.png").is_file()
    assert f"job job completed: test_accuracy {metrics['test_accuracy']:.4f}" in result.stdout


@pytest.mark.slow
def test_run_starts_the_mpi_spec_with_horovodrun_over_gloo(
    run_python, mnist_dir: Path, tmp_path: Path
) -> None:
    # Builds the pinned Horovod environment on first use (minutes), then reuses it.
    result = run_job(run_python, tmp_path, "horovod")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "job job: 1 process(es)" in result.stdout  # horovodrun, which starts the ranks
    metrics = json.loads((tmp_path / "job" / "run" / "metrics.json").read_text())
    assert metrics["distribution"] == "horovod" and metrics["workers"] == 2
    assert metrics["test_accuracy"] > 0.9
    assert (tmp_path / "job" / "run" / "model" / "data" / "model.keras").is_file()


@pytest.mark.slow
def test_a_failing_process_fails_the_run_with_its_status(run_python, tmp_path: Path) -> None:
    empty = tmp_path / "empty-mount"
    empty.mkdir()
    result = run_job(run_python, tmp_path, "multi_worker", f"inputs.mnist={empty}")
    assert result.returncode == 2  # training's status for bad data
    assert "lacks train-images-idx3-ubyte.gz" in result.stdout
    assert "failed with exit status 2; stopping the others" in result.stdout
    assert "job job failed (exit status 2)" in result.stderr


def test_the_parameter_server_spec_starts_azure_mls_tasks() -> None:
    plan = local_plan(load_spec(JOBS_DIR / "parameter_server.yml"))
    tasks = tasks_for(plan, "python -m training.train")
    configs = [json.loads(task.env["TF_CONFIG"]) for task in tasks]
    assert [task.name for task in tasks] == ["worker 0", "worker 1", "worker 2", "ps 0"]
    cluster = configs[0]["cluster"]
    assert set(cluster) == {"worker", "ps"} and len(cluster["worker"]) == 3  # no chief
    assert all(config["cluster"] == cluster for config in configs)
    assert all(task.command == ["bash", "-c", "python -m training.train"] for task in tasks)
    assert plan.environment_variables == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def test_a_run_never_writes_over_an_earlier_one(tmp_path: Path) -> None:
    (tmp_path / "job" / "run").mkdir(parents=True)
    (tmp_path / "job" / "run" / "metrics.json").write_text("{}")
    plan = local_plan(load_spec(JOBS_DIR / "single.yml", parse_sets(["inputs.epochs=1"])))
    with pytest.raises(UserError, match="already holds a run"):
        run_plan(plan, outputs_root=tmp_path, job_name="job")
