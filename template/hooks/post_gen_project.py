"""cookiecutter's post-generation hook: bake the project from the repository's tracked files.

The pre-generation hook left ``.bake-source.json`` in the project folder (where this runs):
the repository it found and validated against. ``template/bake.py`` (``post_gen``) copies the
tracked files, trims the features answered ``no``, renames, and records the origin for cruft.
"""

import json
import sys
from pathlib import Path

# json.dumps output never holds three unescaped quotes in a row: a raw string takes it as is.
CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")


def main() -> int:
    note = json.loads(Path(".bake-source.json").read_text(encoding="utf-8"))
    sys.path.insert(0, str(Path(note["repo"]) / "template"))
    import bake

    return bake.post_gen(CONTEXT, Path.cwd())


if __name__ == "__main__":
    sys.exit(main())
