"""The project's command line: ``python -m scripts <command>`` (``--help`` lists them)."""


class UserError(Exception):
    """A mistake the user can fix: printed as one message, exit status 2, no traceback."""
