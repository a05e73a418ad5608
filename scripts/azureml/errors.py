"""Azure's errors in plain words.

The errors users actually hit (not signed in, no permission, quota, a failed image build, a
missing workspace or asset, no network) become one sentence that says what to do; any other
Azure or azure-ai-ml error becomes the service's own message in one line.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from scripts import UserError

if TYPE_CHECKING:
    from scripts.azureml.workspace import Target


@contextlib.contextmanager
def azure_errors(target: Target | None = None) -> Iterator[None]:
    """Azure and azure-ai-ml errors raised inside become the one-sentence ``UserError``."""
    from azure.ai.ml.exceptions import MlException
    from azure.core.exceptions import AzureError

    try:
        yield
    except (AzureError, MlException) as exc:
        raise user_error(exc, target) from None


_SIGN_IN = (
    "you are not signed in to Azure, or the sign-in expired: run `az login` "
    "(and `az account set --subscription <id>`), then retry"
)


def explain(exc: BaseException, target: Target | None = None) -> str | None:
    """One sentence and the fix for an Azure error users hit, or None when it is none of those."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
    )

    workspace = f"workspace {target.workspace_name}" if target else "the workspace"
    if isinstance(exc, ClientAuthenticationError):
        return _SIGN_IN
    text = _error_text(exc)
    lowered = text.lower()
    if "imagebuild" in lowered.replace(" ", "") or "image build" in lowered:
        return (
            f"Azure ML could not build the job's environment image ({first_line(text)}): read "
            "the image build log in studio (the job's Outputs + logs), fix the pins in "
            "training/environments/<environment>/, bump its version and submit again"
        )
    if "quota" in lowered:
        return (
            "the subscription's Azure ML vCPU quota for this VM family in the region is used up "
            f"({first_line(text)}): request more quota in the Azure portal (Quotas, Machine "
            "learning) or check with `python -m scripts preflight`; or lower gpuMaxNodes, or set "
            "gpuPriority to LowPriority, which draws on a separate quota"
        )
    if "does not exist in workspace" in lowered:
        return (
            f"{first_line(text).rstrip('.')}: fix the name in the spec, or register it first "
            "(`python -m scripts register-data` for MNIST; `submit` registers the environments "
            "of training/environments/ by itself)"
        )
    status = getattr(exc, "status_code", None)
    refused = isinstance(exc, HttpResponseError) and status in (401, 403)
    if refused or "authorizationfailed" in lowered:
        return (
            f"{_refused(exc) + ': ' if refused else ''}the signed-in identity may not use "
            f"{workspace} ({first_line(text)}): ask an owner "
            "for the AzureML Data Scientist role (Pulumi config dataScientistUsers or "
            "dataScientistGroups) or sign in as someone who has it (`az login`)"
        )
    missing = isinstance(exc, HttpResponseError) and status == 404
    if missing and target and is_about_workspace(exc, target):
        return (
            f"{workspace} was not found in resource group {target.resource_group} of "
            f"subscription {target.subscription_id}: check the names, or deploy it with `pulumi up`"
        )
    if isinstance(exc, ServiceRequestError):
        return f"cannot reach Azure ({first_line(text)}): check the network connection or proxy"
    return None


def is_about_workspace(exc: BaseException, target: Target) -> bool:
    """Whether a 404 is about the workspace itself rather than something in it.

    ARM says so for any path below a missing workspace: "The Resource
    'Microsoft.MachineLearningServices/workspaces/NAME' under resource group ... was not found".
    """
    request = getattr(getattr(exc, "response", None), "request", None)
    path = str(getattr(request, "url", "")).split("?")[0].rstrip("/")
    if path.lower().endswith(f"/workspaces/{target.workspace_name}".lower()):
        return True
    pattern = rf"workspaces/{re.escape(target.workspace_name)}'\s+under resource group"
    return re.search(pattern, _error_text(exc), re.IGNORECASE) is not None


def user_error(exc: BaseException, target: Target | None = None) -> UserError:
    """An Azure or azure-ai-ml error as the ``UserError`` a user reads: explained when it is
    one users hit, else the service's own message in one line."""
    return translate(exc, target) or UserError(f"{_refused(exc)}: {first_line(_error_text(exc))}")


def translate(exc: BaseException, target: Target | None = None) -> UserError | None:
    """``explain`` as a ``UserError`` (None when the error is not one to explain)."""
    message = explain(exc, target)
    return UserError(message) if message else None


def _refused(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"Azure ML refused the request{f' (HTTP {status})' if status else ''}"


def _error_text(exc: BaseException) -> str:
    parts = [str(exc)]
    error = getattr(exc, "error", None)
    if error is not None:
        parts += [str(getattr(error, "code", "")), str(getattr(error, "message", ""))]
    return " ".join(part for part in parts if part)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(text: str) -> str:
    """The message in an error's text: a JSON body's, azure-ai-ml's "(x) ..." details, or
    the first meaningful line."""
    text = _ANSI.sub("", text)
    details = re.findall(r"^\(x\) (.+)$", text, re.MULTILINE)
    if details:
        return "; ".join(line.strip() for line in details)[:300]
    try:  # a JSON error body (what a failed job's stream raises)
        data = json.loads(text[text.index("{") :])
        found = _find_message(data)
        if found:
            return found
    except ValueError:
        pass
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith(("Code:", "Message:"))
    ]
    return (lines[0] if lines else text)[:300]


def _find_message(data: object) -> str | None:
    if isinstance(data, dict):
        if isinstance(data.get("message"), str) and data["message"]:
            return data["message"][:300]
        for value in data.values():
            found = _find_message(value)
            if found:
                return found
    return None
