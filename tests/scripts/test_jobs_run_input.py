"""Bad input to ``python -m scripts run``: one clear message and exit status 2, before any
process starts or anything is written (the spec file, the flags, the ``--set`` overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import UserError, localjob
from scripts.__main__ import main
from scripts.jobspec import JOBS_DIR, load_spec
from scripts.localjob import local_plan, run_plan

SINGLE = str(JOBS_DIR / "single.yml")


def run(capsys, *argv: str) -> tuple[int, str]:
    """``python -m scripts run ARGV`` in this process (an exception would fail the test):
    (exit status, what it printed to stderr from its first ``error:`` or ``usage:`` line on;
    azure-ai-ml's own log lines before it are not the command's)."""
    try:
        status = main(["run", *argv])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    err = capsys.readouterr().err
    starts = [err.find(word) for word in ("usage:", "error:") if word in err]
    return status, err[min(starts) :] if starts else err


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_a_spec_that_is_not_utf8_is_refused(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "latin1.yml"
    spec.write_bytes("type: command\ncommand: echo café\n".encode("latin-1"))
    status, err = run(capsys, str(spec), "--outputs", str(tmp_path / "out"))
    assert status == 2
    assert f"error: {spec} is not UTF-8 text (byte 0xe9 at offset 31)" in err
    assert "save it as UTF-8" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (": : [\n", "is not a valid Azure ML job spec: Error while parsing yaml file"),
        ("", "is not a valid Azure ML job spec: Target yaml file is empty"),
        ("- a list\n", "is not a valid Azure ML job spec: Expect dict but get <class 'list'>"),
        (
            "type: pipeline\njobs:\n  train:\n    type: command\n    component: gone.yml\n",
            "step 'train' runs the component file gone.yml, which does not exist at",
        ),
    ],
)
def test_a_spec_that_is_no_job_is_refused(
    tmp_path: Path, capsys, content: str, message: str
) -> None:
    spec = tmp_path / "broken.yml"
    spec.write_text(content)
    status, err = run(capsys, str(spec), "--outputs", str(tmp_path / "out"))
    assert status == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_folder_given_as_the_spec_is_refused(tmp_path: Path, capsys) -> None:
    status, err = run(capsys, str(tmp_path), "--outputs", str(tmp_path / "out"))
    assert status == 2
    assert f"error: {tmp_path} is a folder, not a job spec: name a file, e.g. " in err
    assert "single.yml" in err


@pytest.mark.parametrize("where", [".", "sub"])
def test_outputs_that_are_or_lie_under_a_file_are_refused(
    tmp_path: Path, capsys, where: str
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    outputs = (
        (tmp_path / "notes.txt" / where).resolve() if where == "sub" else tmp_path / "notes.txt"
    )
    status, err = run(capsys, SINGLE, "--outputs", str(outputs), "--set", "inputs.epochs=1")
    assert status == 2
    assert f"error: {tmp_path / 'notes.txt'} is a file, not a folder: point --outputs at" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        ("-1", "argument --timeout: -1 must be a positive number of seconds"),
        ("0", "argument --timeout: 0 must be a positive number of seconds"),
        ("nan", "argument --timeout: nan must be a positive number of seconds"),
        ("inf", "argument --timeout: inf must be a positive number of seconds"),
        ("soon", "argument --timeout: 'soon' is not a number of seconds"),
    ],
)
def test_a_timeout_that_is_no_positive_number_is_a_usage_error(
    tmp_path: Path, capsys, timeout: str, message: str
) -> None:
    status, err = run(capsys, SINGLE, "--outputs", str(tmp_path / "out"), "--timeout", timeout)
    assert status == 2 and message in err
    assert "usage: python -m scripts run" in err


@pytest.mark.parametrize(
    "name", ["../escaped", "..", "a/b", "ABSOLUTE", ".hidden", "two words", "", "x" * 256, "é"]
)
def test_a_job_name_that_is_no_single_folder_is_refused(tmp_path: Path, capsys, name: str) -> None:
    name = str(tmp_path / "absolute") if name == "ABSOLUTE" else name
    outputs = tmp_path / "outputs"
    status, err = run(capsys, SINGLE, "--outputs", str(outputs), "--name", name)
    assert status == 2
    assert f"argument --name: job name {name!r} is not valid: use 1-255 letters" in err
    assert files_under(tmp_path) == []  # nothing written, inside the outputs or beside them


def test_the_runner_itself_never_writes_outside_its_outputs(tmp_path: Path) -> None:
    plan = local_plan(load_spec(SINGLE))
    with pytest.raises(UserError, match=r"job name '\.\./escaped' is not valid"):
        run_plan(plan, outputs_root=tmp_path / "outputs", job_name="../escaped")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("inputs.epoch=2", "--set inputs.epoch: the job has no input 'epoch' (its inputs: "),
        ("inputs.epochs=two", "--set inputs.epochs=two: expected an integer"),
        ("inputs.epochs=2 3", "--set inputs.epochs=2 3: expected an integer"),
        ("inputs.epochs=0", "--set inputs.epochs=0: must be at least 1"),
        ("inputs.epochs=true", "--set inputs.epochs=true: expected an integer"),
        ("inputs.learning_rate=fast", "--set inputs.learning_rate=fast: expected a number"),
        ("inputs.learning_rate=.nan", "--set inputs.learning_rate=nan: expected a finite number"),
        ("inputs.epochs=1e400", "--set inputs.epochs=inf: expected a finite integer"),
        ("inputs.learning_rate=.inf", "--set inputs.learning_rate=inf: expected a finite number"),
        ("inputs.seed=-1", "--set inputs.seed=-1: must be between 0 and 4294967295"),
        ("inputs.seed=4294967296", "--set inputs.seed=4294967296: must be between 0 and"),
        ("inputs.mnist=", "--set inputs.mnist=: give a folder, e.g. --set inputs.mnist="),
        ("inputs.mnist=/no/such/folder", "inputs.mnist: /no/such/folder does not exist"),
        ("epochs", "--set 'epochs': expected KEY=VALUE, e.g. --set inputs.epochs=2"),
        ("sedd=1", "--set sedd=1 makes ... single.yml invalid: {'sedd': ['Unknown field.']}"),
        (
            "jobs.train.resources.instance_count=many",
            "--set jobs.train.resources.instance_count=many makes ... single.yml invalid: ",
        ),
    ],
)
def test_a_bad_override_is_refused_before_anything_runs(
    tmp_path: Path, capsys, setting: str, message: str
) -> None:
    status, err = run(capsys, SINGLE, "--outputs", str(tmp_path / "out"), "--set", setting)
    assert status == 2
    first, *rest = message.split(" ... ")  # " ... ": the spec's path, as the cwd shows it
    assert err.startswith(f"error: {first}"), err
    assert all(piece in err for piece in rest), err
    assert not (tmp_path / "out").exists()


# A command job with each distribution a project may be made without (template options).
DISTRIBUTIONS = {
    "mpi": "type: mpi\n  process_count_per_instance: 2",
    "parameter_server": "type: tensorflow\n  worker_count: 3\n  parameter_server_count: 1",
}


def distributed_spec(folder: Path, kind: str) -> Path:
    spec = folder / f"{kind}.yml"
    spec.write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json\n"
        "type: command\ncommand: echo hello\ncode: .\n"
        "environment: azureml:tf-mnist-train@latest\n"
        f"distribution:\n  {DISTRIBUTIONS[kind]}\n"
    )
    return spec


@pytest.mark.parametrize(
    ("kind", "asks", "option"),
    [
        ("mpi", "`distribution: type: mpi` (Horovod over MPI)", "horovod"),
        ("parameter_server", "parameter servers (`parameter_server_count`", "parameter_server"),
    ],
)
def test_a_distribution_this_project_was_made_without_is_refused(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, kind: str, asks: str, option: str
) -> None:
    """A project made from the template without Horovod (or parameter servers) has no launcher
    (runtime) for it: the runner says so in one message, exit 2, before anything starts."""
    monkeypatch.delitem(localjob.LAUNCHERS, "mpi", raising=False)
    monkeypatch.setattr(localjob, "CLUSTER_RUNTIMES", {})
    spec = distributed_spec(tmp_path, kind)
    status, err = run(capsys, str(spec), "--outputs", str(tmp_path / "out"))
    assert status == 2, err
    assert err.startswith(f"error: {spec} asks for {asks}")
    assert f"made from the template with {option}=no" in err
    assert "training/jobs/multi_worker.yml" in err and f"{option}=yes" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_mpi_spec_is_refused_when_its_launcher_module_is_missing(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher is listed but its module is gone (a copy that lost the file): the same
    refusal, not an ImportError."""
    monkeypatch.setitem(localjob.LAUNCHERS, "mpi", "scripts.no_such_launcher:mpi_tasks")
    spec = distributed_spec(tmp_path, "mpi")
    status, err = run(capsys, str(spec), "--outputs", str(tmp_path / "out"))
    assert status == 2, err
    assert "asks for `distribution: type: mpi` (Horovod over MPI)" in err
    assert "with horovod=no, or that support was removed" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
