"""User-facing errors.

Anything a user can cause (bad JSONL, bad config value, unknown detector name) raises
:class:`OptimusError`; the CLI prints its message as one line and exits non-zero, so a
user never sees a traceback for their own mistake.
"""


class OptimusError(Exception):
    """A problem with the user's input or settings, reported as one line."""
