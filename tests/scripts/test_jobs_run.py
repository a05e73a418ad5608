"""``python -m scripts run JOB.yml``: the job specs run on this machine as Azure ML runs them.

The slow tests train for one epoch on real MNIST (the lead's tests already hold distributed
runs to >= 97% over more epochs); here the point is that the YAML, the launcher and the
training script agree: each spec runs, with the processes its distribution declares, and
leaves a model and metrics in its output folder. Each spec's run comes from the session's
``local_job`` fixture (tests/local_jobs.py): tests/training/test_model_export.py loads and serves
the same models instead of training its own.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from scripts import UserError
from scripts.jobspec import JOBS_DIR, load_spec, parse_sets
from scripts.localjob import local_plan, run_plan
from tests.local_jobs import scripts_run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "distribution", "processes"),
    [
        ("single", "single", ["main"]),
        ("multi_worker", "multi_worker", ["worker 0", "worker 1"]),
        # fork:begin parameter_server
        ("parameter_server", "parameter_server", ["worker 0", "worker 1", "worker 2", "ps 0"]),
        # fork:end parameter_server
    ],
)
def test_run_trains_the_spec_locally(
    local_job, mnist_dir: Path, spec: str, distribution: str, processes: list
) -> None:
    job = local_job(spec)  # shared with tests/training/test_model_export.py: read, never write
    result = job.result
    assert result.returncode == 0, job.log[-4000:]
    # the single-node run gets a local data folder; the others fall back to training's own
    # lookup ($MNIST_DATA_DIR), as a workspace data asset does locally
    data = [f"inputs.mnist={mnist_dir}"] if spec == "single" else []
    assert job.sets == ("inputs.epochs=1", *data)
    assert f"job job: {len(processes)} process(es)" in result.stdout
    if data:
        assert f"--data-folder {mnist_dir.resolve()}" in result.stdout  # the runner resolves paths
    else:
        assert "note: inputs.mnist is 'mnist@latest' in the workspace" in result.stdout
    if len(processes) > 1:  # one process per TF task, its lines prefixed with the task
        assert all(f"[{name}] " in result.stdout for name in processes)
    output = job.run
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["distribution"] == distribution
    assert metrics["epochs"] == 1
    assert metrics["test_accuracy"] > 0.9
    assert (output / "model" / "MLmodel").is_file()
    assert (output / "model" / "data" / "model.keras").is_file()
    assert (output / "training_curves.png").is_file()
    assert f"job job completed: test_accuracy {metrics['test_accuracy']:.4f}" in result.stdout
    # the sweep's objective is what training logs to MLflow each epoch, from one run (the
    # chief's), in the spec's experiment: what the bandit policy and the trials' ranking read
    import mlflow

    objective = load_spec(JOBS_DIR / "sweep.yml").step.objective
    client = mlflow.MlflowClient(tracking_uri=job.tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tf-mnist"]
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.experiment_id == experiment.experiment_id
    logged = client.get_metric_history(run.info.run_id, objective.primary_metric)
    assert [point.step for point in logged] == [1]
    assert logged[0].value == pytest.approx(metrics["test_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_a_failing_process_fails_the_run_with_its_status(tmp_path: Path) -> None:
    empty = tmp_path / "empty-mount"
    empty.mkdir()
    sets = ("inputs.epochs=1", f"inputs.mnist={empty}")
    result = scripts_run("multi_worker", tmp_path, sets, timeout=600).result
    assert result.returncode == 2  # training's status for bad data
    assert "lacks train-images-idx3-ubyte.gz" in result.stdout
    assert "failed with exit status 2; stopping the others" in result.stdout
    assert "job job failed (exit status 2)" in result.stderr


# What each process of a job is given, seen from inside it: a stub in place of training.
DUMP_ENV = """\
import json, os, sys
task = json.loads(os.environ["TF_CONFIG"])["task"]
print(task["type"], task["index"])
with open(os.path.join(sys.argv[1], f"env-{os.getpid()}.json"), "w") as out:
    json.dump(dict(os.environ), out)
"""


def environments_of_a_run(tmp_path: Path, spec: str) -> tuple[list[dict[str, str]], str]:
    """Run ``spec``'s processes with the stub as the command; (each one's env, the log)."""
    (tmp_path / "dump_env.py").write_text(DUMP_ENV)
    plan = local_plan(load_spec(JOBS_DIR / spec))
    stub = dataclasses.replace(
        plan, command_template=f"python {tmp_path / 'dump_env.py'} ${{{{outputs.run}}}}"
    )
    log = io.StringIO()
    result = run_plan(stub, outputs_root=tmp_path / "out", job_name="env", sink=log, timeout=60)
    assert result.status == 0, log.getvalue()
    dumps = sorted((tmp_path / "out" / "env" / "run").glob("env-*.json"))
    return [json.loads(path.read_text()) for path in dumps], log.getvalue()


# fork:begin parameter_server
def test_each_parameter_server_process_gets_its_own_task_as_on_azure_ml(tmp_path: Path) -> None:
    import re

    from training.distribute import parse_tf_config
    from training.parameter_server_runtime import promote_chief

    environments, log = environments_of_a_run(tmp_path, "parameter_server.yml")
    configs = [json.loads(env["TF_CONFIG"]) for env in environments]
    tasks = sorted((c["task"]["type"], c["task"]["index"]) for c in configs)
    assert tasks == [("ps", 0), ("worker", 0), ("worker", 1), ("worker", 2)]
    for name in ("worker 0", "worker 1", "worker 2", "ps 0"):  # the log's task is its TF task
        assert f"[{name}] {name}\n" in log
    cluster = configs[0]["cluster"]
    assert all(c["cluster"] == cluster and c["environment"] == "cloud" for c in configs)
    assert set(cluster) == {"worker", "ps"}  # Azure ML names no chief
    addresses = cluster["worker"] + cluster["ps"]
    assert len(addresses) == 4 and len(set(addresses)) == 4
    assert all(re.fullmatch(r"127\.0\.0\.1:\d{2,5}", address) for address in addresses)
    # training promotes worker 0 to chief, as it must on Azure ML; the others shift down
    roles = {
        (c["task"]["type"], c["task"]["index"]): promote_chief(parse_tf_config(json.dumps(c)))
        for c in configs
    }
    assert {key: config["task"] for key, config in roles.items()} == {
        ("worker", 0): {"type": "chief", "index": 0},
        ("worker", 1): {"type": "worker", "index": 0},
        ("worker", 2): {"type": "worker", "index": 1},
        ("ps", 0): {"type": "ps", "index": 0},
    }
    assert roles[("worker", 0)]["cluster"]["chief"] == cluster["worker"][:1]
    # Azure ML's other variables and the spec's reach every process
    assert {env["AZUREML_RUN_ID"] for env in environments} == {"env"}
    assert {env["TF_FORCE_GPU_ALLOW_GROWTH"] for env in environments} == {"true"}


# fork:end parameter_server
def test_each_multi_worker_process_gets_its_own_worker_index(tmp_path: Path) -> None:
    environments, log = environments_of_a_run(tmp_path, "multi_worker.yml")
    configs = [json.loads(env["TF_CONFIG"]) for env in environments]
    assert sorted((c["task"]["type"], c["task"]["index"]) for c in configs) == [
        ("worker", 0),
        ("worker", 1),
    ]
    assert "[worker 0] worker 0\n" in log and "[worker 1] worker 1\n" in log
    cluster = configs[0]["cluster"]
    assert cluster["ps"] == []  # as Azure ML writes it when there are none
    assert len(set(cluster["worker"])) == 2
    assert all(address.startswith("127.0.0.1:") for address in cluster["worker"])


def test_a_run_never_writes_over_an_earlier_one(tmp_path: Path) -> None:
    (tmp_path / "job" / "run").mkdir(parents=True)
    (tmp_path / "job" / "run" / "metrics.json").write_text("{}")
    plan = local_plan(load_spec(JOBS_DIR / "single.yml", parse_sets(["inputs.epochs=1"])))
    with pytest.raises(UserError, match="already holds a run"):
        run_plan(plan, outputs_root=tmp_path, job_name="job")
