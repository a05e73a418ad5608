"""The GitHub workflows as data, for the tests: jobs, steps, run scripts and expressions.

PyYAML reads ``on:`` as the boolean True (YAML 1.1); ``triggers`` hides that.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


@dataclass(frozen=True)
class Workflow:
    path: Path
    text: str
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def triggers(self) -> dict[str, Any]:
        on = self.data.get("on", self.data.get(True))
        if isinstance(on, str):
            return {on: None}
        if isinstance(on, list):
            return dict.fromkeys(on)
        return dict(on or {})

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.data["jobs"]

    @property
    def dispatch_inputs(self) -> dict[str, Any]:
        dispatch = self.triggers.get("workflow_dispatch") or {}
        return dict(dispatch.get("inputs") or {})


def load_workflows(folder: Path = WORKFLOW_DIR) -> list[Workflow]:
    found = []
    for path in sorted(folder.glob("*.y*ml")):
        text = path.read_text(encoding="utf-8")
        found.append(Workflow(path, text, yaml.safe_load(text)))
    return found


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def run_scripts(workflow: Workflow) -> Iterator[tuple[str, str]]:
    """(job id, script) of every ``run:`` step."""
    for job_id, job in workflow.jobs.items():
        for step in steps(job):
            if "run" in step:
                yield job_id, step["run"]


def strings(value: Any) -> Iterator[str]:
    """Every string inside a YAML value (keys excluded)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def expressions(value: Any, *, condition: bool = False) -> Iterator[str]:
    """The ``${{ }}`` expressions in a value; an ``if:`` is an expression even without them."""
    for text in strings(value):
        found = EXPRESSION.findall(text)
        if found:
            yield from (expr.strip() for expr in found)
        elif condition:
            yield text.strip()
