"""Bake a fork from the repository's own tracked files: validate, copy, trim, rename, record.

The cookiecutter hooks (``hooks/``) are thin: ``pre_gen_project.py`` finds the template's
repository and calls :func:`pre_gen`; ``post_gen_project.py`` calls :func:`post_gen`. The
template holds no second copy of the tree: a fork is ``git ls-files`` of the repository minus
the template machinery (``template/``, ``tests/template/``), trimmed of the features answered
``no`` (``trim.py``, ``features.json``) and renamed (:data:`RENAMES`).

Validation reuses the stack rules of ``infra/config.py`` (``validate_config``, no Pulumi
runtime): the answers that become ``Pulumi.yaml`` defaults are checked exactly as ``pulumi up``
and ``preflight`` would check them, and each problem is reported under the variable's name.
Standard library and PyYAML only (cookiecutter depends on PyYAML).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent
MACHINERY = ("template/", "tests/template/")  # the template itself: never part of a fork
SOURCE_NOTE = ".bake-source.json"  # pre_gen -> post_gen: where the repository is
PLACEHOLDER = ".bake-placeholder"  # the only file inside {{cookiecutter.project_slug}}/
YES_NO = ("yes", "no")
FEATURES = ("parameter_server", "horovod", "github_actions")

# Answer -> the Pulumi config key whose validation rule it shares (infra/config.py).
PULUMI_KEYS = {
    "resource_prefix": "project",
    "owner": "owner",
    "azure_location": "location",
    "gpu_vm_size": "gpuVmSize",
    "gpu_max_nodes": "gpuMaxNodes",
    "low_priority": "gpuPriority",
    "network_profile": "profile",
}
SLUG = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
SLUG_MAX = 50
UNSAFE_TEXT = re.compile(r"[\"'\\`\n\r\t{}]")  # breaks YAML, TOML, Python or Markdown literals


def defaults() -> dict[str, str]:
    """The template's default answers: the repository's own values."""
    context = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    return {key: str(value) for key, value in context.items() if not key.startswith("_")}


def answers_of(context: Mapping[str, object]) -> dict[str, str]:
    """The user's answers from a cookiecutter context (private ``_`` keys dropped)."""
    return {key: str(value) for key, value in context.items() if not key.startswith("_")}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _text_problems(answers: Mapping[str, str]) -> list[str]:
    """The rules that are the template's own (names that Pulumi does not validate)."""
    problems = []
    slug = answers["project_slug"]
    if not SLUG.match(slug) or len(slug) > SLUG_MAX:
        problems.append(
            f"project_slug: {slug!r} is not allowed; allowed: lowercase letters, digits and "
            f"single hyphens, starting with a letter, at most {SLUG_MAX} characters "
            "(e.g. acme-digits): it names the folder, the Pulumi project and the Python "
            "distribution"
        )
    for key in ("project_name", "owner"):
        value = answers[key]
        if not value.strip() or UNSAFE_TEXT.search(value):
            problems.append(
                f"{key}: {value!r} is not allowed; allowed: one line of text without quotes, "
                "backslashes, backticks or braces (it is written into YAML, TOML and Python "
                "files)"
            )
    for key in ("low_priority", *FEATURES):
        if answers[key] not in YES_NO:
            problems.append(f"{key}: {answers[key]!r} is not allowed; allowed: yes, no")
    return problems


def _stack_values(answers: Mapping[str, str]) -> dict[str, str]:
    values = {PULUMI_KEYS[key]: answers[key] for key in PULUMI_KEYS}
    values["gpuPriority"] = {"yes": "LowPriority", "no": "Dedicated"}.get(
        answers["low_priority"], "Dedicated"
    )
    return values


def _as_variable(problem: str) -> str:
    """Name a Pulumi config problem by the cookiecutter variable it came from."""
    for variable, key in PULUMI_KEYS.items():
        if problem.startswith(f"{key}:"):
            return f"{variable} (Pulumi config `{key}`){problem[len(key) :]}"
        if problem.startswith(f"tag {key}") or problem.startswith(f"{key} tag"):
            return f"{variable}: {problem}"
    return problem


def validate(answers: Mapping[str, str], repo: Path) -> tuple[list[str], dict[str, str]]:
    """Every problem of the answers, and the canonical stack values when there is none.

    The stack values (``location``, ``gpuVmSize``...) come back as ``validate_config`` spells
    them (``Sweden Central`` -> ``swedencentral``), ready to be written as defaults."""
    problems = _text_problems(answers)
    sys.path.insert(0, str(repo))
    try:
        from infra.config import ConfigError, load_project, validate_config
    finally:
        sys.path.remove(str(repo))
    try:
        config = validate_config(_stack_values(answers), load_project(repo / "Pulumi.yaml"))
    except ConfigError as error:
        return problems + [_as_variable(p) for p in error.problems], {}
    canonical = {
        "azure_location": config.location,
        "gpu_vm_size": config.gpu.vm_size,
        "gpu_max_nodes": str(config.gpu.max_nodes),
        "network_profile": config.profile,
    }
    return problems, canonical


# ---------------------------------------------------------------------------------------------
# Renaming
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rename:
    """Where a default value denotes the answered thing: ``pattern`` finds the default (group
    ``old``) in the files matching ``paths`` (globs; empty: every file)."""

    variable: str
    pattern: str
    paths: tuple[str, ...] = ()
    new: Callable[[str], str] = str  # answer -> replacement text
    within: str = ""  # a pattern: only inside its matches (a test function, say)

    def applies_to(self, path: str) -> bool:
        return not self.paths or any(Path(path).match(glob) for glob in self.paths)


def _test_functions(*prefixes: str) -> str:
    """The test functions whose names start with one of ``prefixes``, each up to the next."""
    names = "|".join(re.escape(prefix) for prefix in prefixes)
    return rf"(?ms)^def (?:{names})\w*\(.*?(?=^def |\Z)"


def _default_in_block(key: str, default: str) -> str:
    """A config declaration's ``default:`` line in a Pulumi.yaml (``key:`` block)."""
    return rf"(?m)^  {key}:\n(?:    .*\n)*?    default: (?P<old>{re.escape(default)})$"


def _table_cell(key: str, default: str) -> str:
    """The README's config table: ``| `key` | `default` |``."""
    return rf"\| `{key}` \| `(?P<old>{re.escape(default)})` \|"


def renames(old: Mapping[str, str]) -> list[Rename]:
    """Every place a default answer appears as the thing it names, in the order applied.

    ``old`` are the default answers (the repository's values). A token is matched whole:
    never inside a longer name (``mnist`` the data set is not ``mnist`` the prefix)."""
    slug, prefix = re.escape(old["project_slug"]), re.escape(old["resource_prefix"])
    pulumi = ("Pulumi.yaml",)  # the project's and the bootstrap program's (infra/bootstrap/)
    return [
        Rename(
            "project_name", rf"(?m)^# (?P<old>{re.escape(old['project_name'])})$", ("README.md",)
        ),
        Rename(
            "project_name",
            rf'(?m)^description = "(?P<old>{re.escape(old["project_name"])}) ',
            ("pyproject.toml",),
        ),
        # The slug: Pulumi project (and stack config keys, stack names), distribution, caches.
        Rename("project_slug", rf"(?<![\w-])(?P<old>{slug})(?!\w)"),
        # Azure ML asset names (experiment, model, environments): tf-<prefix>[-...].
        Rename("resource_prefix", rf"(?<![\w-])tf-(?P<old>{prefix})(?![\w])"),
        # Endpoint names (unique per region): <prefix>-digits[-batch|-mlflow|...].
        Rename("resource_prefix", rf"(?<![\w-])(?P<old>{prefix})-digits(?![\w])"),
        # Azure resource names as infra/config.py's resource_names() builds them.
        Rename("resource_prefix", rf"(?<![\w-])(?!tf-)[a-z]{{1,5}}-(?P<old>{prefix})(?=-)"),
        Rename("resource_prefix", rf"(?<![\w-])(?:st|kv|cr)(?P<old>{prefix})(?=[a-z0-9])"),
        # The `project` config default, and tests and docs that spell it.
        Rename("resource_prefix", _default_in_block("project", old["resource_prefix"]), pulumi),
        Rename(
            "resource_prefix",
            rf'(?<![\w-])"(?P<old>{prefix})(?=(?:dev|prod)?")',
            ("tests/infra/*.py", "tests/infra/*/*.py"),
        ),
        Rename(
            "resource_prefix",
            rf"`(?P<old>{prefix})`(?=, `dev`|, as the main stacks)",
            ("README.md",),
        ),
        Rename("owner", rf"(?<![\w-])(?P<old>{re.escape(old['owner'])})(?![\w-])"),
        Rename("azure_location", _default_in_block("location", old["azure_location"]), pulumi),
        Rename("azure_location", _table_cell("location", old["azure_location"]), ("README.md",)),
        # The example stacks and the bootstrap how-to name their own region (westeurope):
        # another answer than the default puts every stack in that region.
        Rename(
            "azure_location",
            r"(?m)^  \S+:location: (?P<old>westeurope)$",
            ("Pulumi.*.yaml",),
        ),
        Rename(
            "azure_location",
            r"pulumi config set location (?P<old>westeurope)(?= +# the main)",
            ("README.md",),
        ),
        # ...and so do the tests that read those stacks (preflight's fake offers that region).
        Rename(
            "azure_location",
            r"(?<![a-z])(?P<old>westeurope)(?![a-z])",
            ("tests/scripts/test_infra_preflight.py",),
            within=_test_functions(
                "test_the_command_prints_a_report", "test_the_command_takes_the"
            ),
        ),
        Rename(
            "azure_location",
            r'values\["location"\] == "(?P<old>westeurope)"',
            ("tests/infra/test_infra_config.py",),
        ),
        Rename("gpu_vm_size", _default_in_block("gpuVmSize", old["gpu_vm_size"]), pulumi),
        Rename("gpu_vm_size", _table_cell("gpuVmSize", old["gpu_vm_size"]), ("README.md",)),
        Rename("gpu_max_nodes", _default_in_block("gpuMaxNodes", old["gpu_max_nodes"]), pulumi),
        Rename(
            "gpu_max_nodes",
            rf"\| `gpuMinNodes`, `gpuMaxNodes` \| 0, (?P<old>{re.escape(old['gpu_max_nodes'])}) \|",
            ("README.md",),
        ),
        Rename(
            "low_priority",
            _default_in_block("gpuPriority", _priority(old["low_priority"])),
            pulumi,
            _priority,
        ),
        Rename(
            "low_priority",
            _table_cell("gpuPriority", _priority(old["low_priority"])),
            ("README.md",),
            _priority,
        ),
        Rename("network_profile", _default_in_block("profile", old["network_profile"]), pulumi),
        Rename("network_profile", _table_cell("profile", old["network_profile"]), ("README.md",)),
        # The tests of the defaults themselves spell them (the others state what they test).
        *_default_tests(old),
    ]


def _default_tests(old: Mapping[str, str]) -> list[Rename]:
    fresh = _test_functions("test_a_fresh_stack_works_with_just_a_location")
    cheapest = _test_functions("test_default_gpu_size_is_the_cheapest_current_one")
    size, nodes = re.escape(old["gpu_vm_size"]), re.escape(old["gpu_max_nodes"])
    config, policy = ("tests/infra/test_infra_config.py",), ("tests/infra/test_infra_policy.py",)
    return [
        Rename(
            "network_profile",
            rf'cfg\.profile == "(?P<old>{re.escape(old["network_profile"])})"',
            config,
            within=fresh,
        ),
        Rename("gpu_vm_size", rf'\("(?P<old>{size})", 0, \d+\)', config, within=fresh),
        Rename("gpu_max_nodes", rf'\("[\w_]+", 0, (?P<old>{nodes})\)', config, within=fresh),
        Rename("gpu_vm_size", rf'\["vmSize"\] == "(?P<old>{size})"', policy, within=cheapest),
        Rename(
            "gpu_max_nodes",
            rf'(?m)\["maxNodeCount"\] == (?P<old>{nodes})$',
            policy,
            within=cheapest,
        ),
        Rename(
            "network_profile",
            rf"profile (?P<old>{re.escape(old['network_profile'])})\):",
            ("tests/scripts/test_infra_preflight.py",),
            within=_test_functions("test_the_command_prints_a_report"),
        ),
    ]


def _priority(answer: str) -> str:
    return "LowPriority" if answer == "yes" else "Dedicated"


def rename_text(text: str, path: str, answers: Mapping[str, str], old: Mapping[str, str]) -> str:
    """``text`` of the file ``path`` with every default replaced by its answer, in one pass per
    rule through placeholders, so that no answer is renamed again by a later rule."""
    replaced: list[str] = []

    def stash(rule: Rename) -> Callable[[re.Match[str]], str]:
        def swap(match: re.Match[str]) -> str:
            start, end = match.span("old")
            replaced.append(rule.new(answers[rule.variable]))
            token = f"\x00{len(replaced) - 1}\x00"
            return (
                match.group(0)[: start - match.start()]
                + token
                + match.group(0)[end - match.start() :]
            )

        return swap

    for rule in renames(old):
        if answers[rule.variable] == old[rule.variable] or not rule.applies_to(path):
            continue
        swap = stash(rule)
        if rule.within:
            text = re.sub(rule.within, lambda m, r=rule, s=swap: re.sub(r.pattern, s, m[0]), text)
        else:
            text = re.sub(rule.pattern, swap, text)
    return re.sub("\x00(\\d+)\x00", lambda m: replaced[int(m.group(1))], text)


def rename_tree(root: Path, answers: Mapping[str, str], old: Mapping[str, str]) -> list[Path]:
    """Rename every text file under ``root`` (binary files are left as they are); the files
    that changed."""
    changed = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        relative = path.relative_to(root).as_posix()
        renamed = rename_text(text, relative, answers, old)
        if renamed != text:
            path.write_bytes(renamed.encode("utf-8"))
            changed.append(path)
    return changed


def reformat(root: Path, paths: list[Path]) -> None:
    """A name of another length can move a line across the limit: ``ruff format`` the renamed
    Python files with the project's own settings, so the fork passes ``make lint``."""
    python = [str(p.relative_to(root)) for p in paths if p.suffix == ".py"]
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if not python:
        return
    if ruff is None:
        print("template: ruff not found; run `ruff format .` in the new project", file=sys.stderr)
        return
    subprocess.run([ruff, "format", "--quiet", "--no-cache", *python], cwd=root, check=True)


# ---------------------------------------------------------------------------------------------
# The hooks
# ---------------------------------------------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def tracked_files(repo: Path) -> list[str]:
    """The repository's tracked files as they are on disk, the template machinery left out."""
    names = _git("ls-files", "-z", cwd=repo).split("\0")
    return [
        name
        for name in names
        if name and not name.startswith(MACHINERY) and (repo / name).is_file()
    ]


def pre_gen(repo: Path, context: Mapping[str, object], project_dir: Path, temporary: bool) -> int:
    """Validate the answers; on success tell post_gen where the repository is (``temporary``:
    a clone that post_gen deletes). The exit status of the hook."""
    answers = answers_of(context)
    problems, canonical = validate(answers, repo)
    if problems:
        print(
            "The template's answers are wrong; nothing was written. Fix these and run again:\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            file=sys.stderr,
        )
        if temporary:
            shutil.rmtree(repo, ignore_errors=True)
        return 2
    note = {"repo": str(repo), "temporary": temporary, "canonical": canonical}
    (project_dir / SOURCE_NOTE).write_text(json.dumps(note), encoding="utf-8")
    return 0


def post_gen(context: Mapping[str, object], project_dir: Path) -> int:
    """Copy the tracked files into ``project_dir``, trim, rename, record the origin."""
    note = json.loads((project_dir / SOURCE_NOTE).read_text(encoding="utf-8"))
    repo = Path(note["repo"])
    (project_dir / SOURCE_NOTE).unlink()
    (project_dir / PLACEHOLDER).unlink(missing_ok=True)
    for name in tracked_files(repo):
        target = project_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / name, target)
        shutil.copymode(repo / name, target)
    answers = {**answers_of(context), **note["canonical"]}
    sys.path.insert(0, str(repo / "template"))
    try:
        from trim import trim
    finally:
        sys.path.remove(str(repo / "template"))
    trim(project_dir, answers)
    reformat(project_dir, rename_tree(project_dir, answers, defaults()))
    if "_commit" not in context:  # plain cookiecutter; cruft writes its own .cruft.json
        write_cruft_state(repo, context, project_dir)
    if note["temporary"]:
        shutil.rmtree(repo, ignore_errors=True)
    return 0


def template_url(repo: Path, context: Mapping[str, object]) -> str:
    """Where ``cruft`` finds the template again: the local repository's absolute path, or the
    URL cookiecutter cloned (abbreviations such as ``gh:`` expanded)."""
    given = str(context.get("_template", ""))
    if given and Path(given).expanduser().is_dir():
        return str(repo)
    return _git("remote", "get-url", "origin", cwd=repo).strip()


def write_cruft_state(repo: Path, context: Mapping[str, object], project_dir: Path) -> None:
    """``.cruft.json`` as ``cruft create`` writes it, so ``cruft check``/``update`` work on a
    fork baked by plain cookiecutter."""
    url = template_url(repo, context)
    commit = _git("rev-parse", "HEAD", cwd=repo).strip()
    # In cookiecutter.json's order, as cruft writes them (the hook's context comes sorted), so
    # that a fork's first `cruft update` changes no more of this file than the commit.
    order = [*defaults(), *sorted(context)]
    recorded = {k: context[k] for k in dict.fromkeys(order) if k in context and k[0] != "_"}
    recorded.update({"_template": url, "_commit": commit})
    state = {
        "template": url,
        "commit": commit,
        "checkout": context.get("_checkout"),
        "context": {"cookiecutter": recorded},
        "directory": "template",
    }
    text = json.dumps(state, indent=2) + "\n"
    (project_dir / ".cruft.json").write_text(text, encoding="utf-8")
