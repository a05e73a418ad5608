"""``type: mpi`` job specs on this machine: Horovod's ranks under ``horovodrun`` over Gloo
(``scripts/horovod_launch.py``)."""

from __future__ import annotations

import json
import os

import pytest

from scripts.horovod_launch import horovod_tasks


@pytest.mark.slow
def test_run_starts_the_mpi_spec_with_horovodrun_over_gloo(local_job) -> None:
    # Builds the pinned Horovod environment on first use (minutes), then reuses it.
    job = local_job("horovod")  # shared with tests/training/test_model_export.py
    assert job.result.returncode == 0, job.log[-4000:]
    assert job.sets == ("inputs.epochs=1",)
    assert "job job: 1 process(es)" in job.result.stdout  # horovodrun, which starts the ranks
    metrics = json.loads((job.run / "metrics.json").read_text())
    assert metrics["distribution"] == "horovod" and metrics["workers"] == 2
    assert metrics["test_accuracy"] > 0.9
    assert (job.run / "model" / "data" / "model.keras").is_file()


def test_horovodrun_runs_every_rank_on_loopback() -> None:
    (task,) = horovod_tasks(["bash", "-c", "python -m training.train"], 2, "/hvd/bin/python")
    assert task.command == [
        "/hvd/bin/horovodrun",
        "--gloo",
        "-np",
        "2",
        "-H",
        "127.0.0.1:2",
        "bash",
        "-c",
        "python -m training.train",
    ]
    assert task.env["PATH"].split(os.pathsep)[0] == "/hvd/bin"
