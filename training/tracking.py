"""MLflow tracking of a training run: its params once, its metrics every epoch, its outputs at
the end. Only the chief tracks; MLflow is imported when a run starts, so an environment
without it (the Horovod one) still trains, with metrics in metrics.json only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from training.outputs import write_atomic


class Tracker:
    """MLflow on the chief: a local store by default, the workspace on Azure ML."""

    def __init__(self, enabled: bool, run_id_path: Path) -> None:
        self.mlflow = None
        if not enabled:
            return
        try:
            import mlflow
        except ImportError:
            print("MLflow is not installed: metrics go to metrics.json only.", file=sys.stderr)
            return
        self.mlflow = mlflow
        previous = run_id_path.read_text().strip() if run_id_path.exists() else None
        # A resumed run keeps the params it logged (MLflow refuses to change them).
        self.continued = previous is not None
        if os.environ.get("MLFLOW_RUN_ID") or previous is None:
            run = mlflow.start_run()
        else:
            run = mlflow.start_run(run_id=previous)  # a resumed run continues its MLflow run
        write_atomic(run_id_path, run.info.run_id)

    def params(self, params: dict[str, Any]) -> None:
        if self.mlflow and not self.continued:
            self.mlflow.log_params(params)

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        if self.mlflow:
            for path in paths:
                self.mlflow.log_artifact(str(path))

    def end(self) -> None:
        if self.mlflow:
            self.mlflow.end_run()
