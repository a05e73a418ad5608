"""Remove the optional features a fork answered "no" to, from a copy of the repository.

The features and what belongs to each are declared in ``features.json`` beside this file:

- ``paths``: files, and folders (ending in ``/``), that belong to the feature alone; they are
  deleted when its answer is ``no``.
- ``names``: strings (module, file, class and ``make`` target names) that must not remain
  anywhere in a tree without the feature: ``dangling`` finds them.

Shared files mark the lines of a feature with a pair of comment lines, in the comment syntax
of the file (``#``, ``<!-- ... -->``, ``//``, ``--``, ``;``), alone on their line::

    # fork:begin horovod
    ...lines that exist only with Horovod...
    # fork:end horovod

When the answer is ``no`` the block, both marker lines included, is removed; when it is
``yes`` the file is left byte for byte as it is, so baking with the default answers (all
``yes``) reproduces the repository. Blocks do not nest; an unbalanced or unknown marker is
a ``TrimError`` naming the file and line, whatever the answers.

The template's own machinery (``template/``, ``tests/template/``) is not part of a fork and is
never trimmed or searched. Standard library only: the cookiecutter hook imports this file by
path (``trim(root, answers)``, before it renames anything).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

FEATURES_FILE = Path(__file__).with_name("features.json")
MACHINERY = ("template/", "tests/template/")  # the template itself: never part of a fork
ANSWERS = ("yes", "no")
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}

# A marker is a comment line of its own: `# fork:begin horovod`, `<!-- fork:end horovod -->`.
MARKER = re.compile(
    r"^[ \t]*(?:#+|<!--|//|--|;+)[ \t]*fork:(?P<edge>begin|end)[ \t]+(?P<feature>[A-Za-z0-9_]+)"
    r"[ \t]*(?:-->)?[ \t]*$"
)


class TrimError(ValueError):
    """The features file, an answer or a marker is wrong; the message says where."""


def load_features(path: Path = FEATURES_FILE) -> dict[str, dict[str, list[str]]]:
    """``features.json``: feature -> {"paths": [...], "names": [...]}."""
    features = json.loads(path.read_text(encoding="utf-8"))
    for feature, parts in features.items():
        if set(parts) != {"paths", "names"}:
            raise TrimError(f"{path}: feature {feature!r} must have exactly 'paths' and 'names'")
    return features


def trim(root: Path, answers: Mapping[str, str]) -> None:
    """Remove from ``root`` every feature whose answer is ``no``.

    ``answers`` may hold other keys (the whole cookiecutter context); a feature it does not
    name is kept. Every marker in the tree is checked first, so nothing is changed when one
    is wrong.
    """
    root = Path(root)
    features = load_features()
    dropped = {feature for feature in features if _answer(answers, feature) == "no"}
    blocks = {path: _blocks(root, path, features) for path in _text_files(root)}
    for feature in sorted(dropped):
        for entry in features[feature]["paths"]:
            _remove(root, entry)
    for path, found in blocks.items():
        if (root / path).is_file() and any(feature in dropped for feature, _, _ in found):
            _drop_blocks(root / path, [(b, e) for f, b, e in found if f in dropped])


def dangling(root: Path, feature: str) -> list[str]:
    """Every ``path:line: name`` in ``root`` that names something of ``feature``."""
    names = load_features()[feature]["names"]
    hits = []
    for path in _text_files(Path(root)):
        text = _read(Path(root) / path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            hits.extend(f"{path}:{number}: {name}" for name in names if name in line)
    return hits


def _answer(answers: Mapping[str, str], feature: str) -> str:
    answer = str(answers.get(feature, "yes")).strip().lower()
    if answer not in ANSWERS:
        raise TrimError(f"{feature}={answers.get(feature)!r}: answer yes or no")
    return answer


def _text_files(root: Path) -> Iterator[str]:
    """Repository-relative paths of the files under ``root``, the template machinery left out."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and not path.is_symlink()
            and not SKIPPED_DIRS.intersection(path.relative_to(root).parts)
            and not relative.startswith(MACHINERY)
        ):
            yield relative


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary: no markers, no names


def _blocks(root: Path, path: str, features: Mapping[str, object]) -> list[tuple[str, int, int]]:
    """(feature, first line index, last line index) of each marked block of a file."""
    text = _read(root / path)
    if text is None or "fork:" not in text:
        return []
    found, open_feature, start = [], None, 0
    for index, line in enumerate(text.splitlines()):
        match = MARKER.match(line)
        if match is None:
            continue
        edge, feature, where = match["edge"], match["feature"], f"{path}:{index + 1}"
        if feature not in features:
            raise TrimError(
                f"{where}: marker for unknown feature {feature!r} "
                f"(features.json knows {', '.join(sorted(features))})"
            )
        if edge == "begin":
            if open_feature is not None:
                raise TrimError(
                    f"{where}: 'fork:begin {feature}' inside the {open_feature!r} block opened "
                    f"at line {start + 1}; close it first (blocks do not nest)"
                )
            open_feature, start = feature, index
        else:
            if open_feature != feature:
                opened = "no block is" if open_feature is None else f"{open_feature!r} is"
                raise TrimError(f"{where}: 'fork:end {feature}' but {opened} open")
            found.append((feature, start, index))
            open_feature = None
    if open_feature is not None:
        raise TrimError(
            f"{path}:{start + 1}: 'fork:begin {open_feature}' has no 'fork:end {open_feature}'"
        )
    return found


def _drop_blocks(path: Path, spans: list[tuple[int, int]]) -> None:
    lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
    dropped = {index for first, last in spans for index in range(first, last + 1)}
    path.write_bytes("".join(ln for i, ln in enumerate(lines) if i not in dropped).encode())


def _remove(root: Path, entry: str) -> None:
    """Delete a feature's file or folder, then the folders it leaves empty (git keeps none)."""
    target = root / entry.rstrip("/")
    if entry.endswith("/") and target.is_dir():
        shutil.rmtree(target)
    elif not entry.endswith("/") and (target.is_file() or target.is_symlink()):
        target.unlink()
    folder = target.parent
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
