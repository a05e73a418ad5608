"""The prediction-drift monitor of the online endpoint (``python -m scripts monitor``).

- :func:`write_reference_table`: the training labels as an MLTable folder (``labels.csv`` with
  one ``digit`` column and the ``MLTable`` file that reads it), the monitor's reference data.
- :func:`load_monitor`: ``prediction-drift.yml`` loaded with azure-ai-ml's own loader, named
  for the endpoint, pointed at the colour that serves, alerting the given e-mails.
- :func:`apply_monitor`: registers the reference data when the workspace lacks it, then creates
  or updates the schedule. The serving colour changes with every rollout, so the monitor is
  re-pointed after each one (``deploy --monitor`` does it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.code.request_log import DIGIT_COLUMN

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import MonitorSchedule

SCHEDULE_SPEC = (
    Path(__file__).resolve().parents[2] / "serving" / "monitoring" / "prediction-drift.yml"
)
SIGNAL = "prediction-drift"
MLTABLE = f"""\
$schema: https://azuremlschemas.azureedge.net/latest/MLTable.schema.json
type: mltable
paths:
  - file: ./labels.csv
transformations:
  - read_delimited:
      delimiter: ","
      header: all_files_same_headers
      encoding: utf8
      infer_column_types: false
  - convert_column_types:
      - columns: {DIGIT_COLUMN}
        column_type: int
"""


class MonitorError(Exception):
    """The monitor cannot be set up; the message says why and what to do."""


def write_reference_table(labels: np.ndarray, folder: Path) -> Path:
    """``folder`` as an MLTable of the training labels: ``MLTable`` and ``labels.csv``."""
    from training.model import NUM_CLASSES  # the classes the models predict

    labels = np.asarray(labels)
    if labels.ndim != 1 or not labels.size:
        raise MonitorError(f"Expected a list of training labels, got shape {labels.shape}.")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise MonitorError(
            f"Training labels must be classes 0-{NUM_CLASSES - 1}, found "
            f"{labels.min()}-{labels.max()}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(str(int(label)) for label in labels)
    (folder / "labels.csv").write_text(f"{DIGIT_COLUMN}\n{rows}\n")
    (folder / "MLTable").write_text(MLTABLE)
    return folder


def _reference_signal(schedule: MonitorSchedule) -> Any:
    return schedule.create_monitor.monitoring_signals[SIGNAL]


def reference_asset(schedule: MonitorSchedule) -> tuple[str, str]:
    """The reference data asset the spec names: ``(name, version)``."""
    path = str(_reference_signal(schedule).reference_data.input_data.path)
    name, _, version = path.removeprefix("azureml:").partition(":")
    if not name or not version:
        raise MonitorError(
            f"{SCHEDULE_SPEC.name}: reference_data path {path!r} must name a data asset "
            "version, azureml:NAME:VERSION."
        )
    return name, version


def load_monitor(
    endpoint: str, deployment: str, emails: Sequence[str] = (), spec: Path = SCHEDULE_SPEC
) -> MonitorSchedule:
    """The schedule for ``endpoint``'s ``deployment`` (its serving colour)."""
    from azure.ai.ml.entities import AlertNotification
    from azure.ai.ml.entities._load_functions import load_schedule  # not re-exported in 1.35

    schedule = load_schedule(
        spec,
        params_override=[
            {"name": f"{endpoint}-prediction-drift"},
            {
                "create_monitor.monitoring_target.endpoint_deployment_id": (
                    f"azureml:{endpoint}:{deployment}"
                )
            },
        ],
    )
    if emails:
        schedule.create_monitor.alert_notification = AlertNotification(emails=list(emails))
    return schedule


def serving_colour(ml_client: MLClient, endpoint: str) -> str:
    """The deployment that takes the endpoint's traffic (MonitorError if none or split)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        traffic = ml_client.online_endpoints.get(endpoint).traffic or {}
    except ResourceNotFoundError:
        raise MonitorError(
            f"Endpoint {endpoint} does not exist: deploy first (python -m scripts deploy)."
        ) from None
    live = sorted(name for name, share in traffic.items() if share > 0)
    if len(live) != 1:
        raise MonitorError(
            f"Endpoint {endpoint} sends traffic to {', '.join(live) or 'no deployment'}: the "
            "monitor follows the one deployment that serves; finish the rollout first."
        )
    return live[0]


def ensure_reference_data(
    ml_client: MLClient,
    schedule: MonitorSchedule,
    labels: Callable[[], np.ndarray],
    log: Callable[[str], None],
) -> str:
    """Register the reference data asset when missing (``labels`` read only then)."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data
    from azure.core.exceptions import ResourceNotFoundError

    name, version = reference_asset(schedule)
    try:
        ml_client.data.get(name, version=version)
        return f"{name}:{version}"
    except ResourceNotFoundError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_reference_table(labels(), Path(tmp) / name)
        ml_client.data.create_or_update(
            Data(
                name=name,
                version=version,
                type=AssetTypes.MLTABLE,
                path=str(folder),
                description="MNIST training labels (one `digit` column): the reference of the "
                "endpoint's prediction-drift monitor.",
            )
        )
    log(f"Registered reference data {name}:{version}.")
    return f"{name}:{version}"


def apply_monitor(
    ml_client: MLClient,
    *,
    endpoint: str,
    labels: Callable[[], np.ndarray],
    emails: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> MonitorSchedule:
    """Create or update ``endpoint``'s prediction-drift schedule on its serving colour."""
    deployment = serving_colour(ml_client, endpoint)
    schedule = load_monitor(endpoint, deployment, emails)
    ensure_reference_data(ml_client, schedule, labels, log)
    created = ml_client.schedules.begin_create_or_update(schedule).result()
    log(
        f"Monitor {created.name}: prediction drift of {endpoint}/{deployment} against the "
        f"training labels, daily; alerts to {', '.join(emails) or 'nobody (no alertEmails)'}."
    )
    return created
