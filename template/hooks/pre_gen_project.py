"""cookiecutter's pre-generation hook: find the template's repository, validate the answers.

cookiecutter renders this file with Jinja (``CONTEXT``) and runs the result from a temporary
file in the new project folder, so the repository is found from the context, never from this
file's path:

- ``cookiecutter <path or git URL> --directory template``: ``_repo_dir`` is the template
  folder of the repository (or of cookiecutter's clone of it). A relative path is relative to
  where cookiecutter started; the cookiecutter process that runs this hook sits inside the
  template folder meanwhile (``/proc`` shows it on Linux), else it started in ``_output_dir``.
- ``cruft create | update | check`` call cookiecutter's ``generate_files`` with ``_template``
  (URL or absolute path) and ``_commit`` only: that commit is cloned into a temporary folder,
  which the post-generation hook deletes.

Nothing is written before the answers are valid (``template/bake.py``, ``pre_gen``).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# json.dumps output never holds three unescaped quotes in a row: a raw string takes it as is.
CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _template_folders(given: str) -> list[Path]:
    if Path(given).is_absolute():
        return [Path(given)]
    return [Path(f"/proc/{os.getppid()}/cwd"), Path(str(CONTEXT["_output_dir"])) / given]


def locate() -> tuple[Path, bool]:
    """The template's repository, and whether it is a temporary clone."""
    given = CONTEXT.get("_repo_dir")
    if given:
        for folder in _template_folders(str(given)):
            if (folder / "cookiecutter.json").is_file() and (folder / "bake.py").is_file():
                return Path(
                    _git("-C", str(folder.resolve()), "rev-parse", "--show-toplevel")
                ), False
        sys.exit(
            f"template: cannot find the template folder {given!r} from the project folder; "
            "give cookiecutter the template's absolute path or a git URL"
        )
    clone = Path(tempfile.mkdtemp(prefix="bake-source-"))
    _git("clone", "--quiet", "--no-checkout", str(CONTEXT["_template"]), str(clone))
    _git("-C", str(clone), "checkout", "--quiet", str(CONTEXT["_commit"]))
    return clone, True


def main() -> int:
    repo, temporary = locate()
    sys.path.insert(0, str(repo / "template"))
    import bake

    return bake.pre_gen(repo, CONTEXT, Path.cwd(), temporary)


if __name__ == "__main__":
    sys.exit(main())
