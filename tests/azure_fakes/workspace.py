"""``FakeWorkspace``: one offline Azure ML workspace, every service in one object behind one
transport (``fake.transport()``, azure-core's real ``RequestsTransport``; ``fake.ml_client()``).

Its classes, one concern each, share the router and ARM store of ``base.Workspace``:
``storage.BlobStorage`` (uploads, downloads, listings), ``jobs.Jobs`` (jobs run, run history),
``batch.BatchEndpoints`` and ``online.OnlineEndpoints`` (with scoring, diagnostic settings,
autoscale and monitoring schedules). Every request is recorded in ``requests`` (``calls`` and
``arm_calls`` filter them); ``fail``/``answer``/``interrupt`` make chosen requests answer a
service error, a given body, or raise Ctrl-C.
"""

from __future__ import annotations

from tests.azure_fakes.batch import BatchEndpoints
from tests.azure_fakes.online import OnlineEndpoints


class FakeWorkspace(OnlineEndpoints, BatchEndpoints):
    """The workspace of every offline Azure test (no credentials, no network)."""
