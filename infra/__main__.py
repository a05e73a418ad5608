"""What ``pulumi up`` runs (``main: infra/`` in Pulumi.yaml)."""

import sys
from pathlib import Path

# Pulumi runs this file as a script; make the repository root importable so that the program
# is the ``infra`` package, the same code the tests import.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from infra.program import main  # noqa: E402

main()
