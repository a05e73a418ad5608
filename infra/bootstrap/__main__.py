"""What ``pulumi up`` runs in infra/bootstrap (the project folder is the program)."""

import sys
from pathlib import Path

# Pulumi runs this file as a script from infra/bootstrap; make the repository root importable
# so that the program is the ``infra.bootstrap`` package, the same code the tests import.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from infra.bootstrap.program import main  # noqa: E402

main()
