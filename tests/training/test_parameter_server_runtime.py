"""Parameter-server clusters as Azure ML starts them: worker 0 becomes the coordinator
(``training/parameter_server_runtime.py``; no training here)."""

from __future__ import annotations

import json

import pytest

from tests.training.test_distribute import azureml
from training.distribute import ClusterConfigError, parse_tf_config
from training.parameter_server_runtime import promote_chief


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (("worker", 0), {"type": "chief", "index": 0}),
        (("worker", 1), {"type": "worker", "index": 0}),
        (("worker", 2), {"type": "worker", "index": 1}),
        (("ps", 0), {"type": "ps", "index": 0}),
    ],
)
def test_worker_zero_becomes_the_parameter_server_coordinator(task, expected):
    config = promote_chief(parse_tf_config(azureml(*task, ps=["p0:9"])))
    assert config["cluster"] == {"chief": ["w0:1"], "worker": ["w1:2", "w2:3"], "ps": ["p0:9"]}
    assert config["task"] == expected


def test_parameter_server_job_with_one_worker_asks_for_more():
    raw = json.dumps(
        {"cluster": {"worker": ["w0:1"], "ps": ["p:2"]}, "task": {"type": "worker", "index": 0}}
    )
    with pytest.raises(ClusterConfigError, match=r"at least 2 workers.*worker_count"):
        promote_chief(parse_tf_config(raw))
