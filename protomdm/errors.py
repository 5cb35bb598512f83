"""Errors that mean "the user asked for something that cannot be done".

The CLI turns a :class:`UserError` into one line on stderr and exit status 2, never a traceback. Library callers
can catch it like any ``ValueError``. A message names a setting by its Python keyword in backticks (`` `overwrite` ``);
the CLI shows it as the flag (``--overwrite``).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a missing file, a wrong index, an invalid setting."""


class CheckpointError(UserError):
    """A file that is not a loadable protomdm checkpoint (missing, truncated, foreign or of the wrong kind)."""


class ImageError(UserError):
    """A file that cannot be read as an image."""


class ConfigError(UserError):
    """A config with an unknown key, a wrong type or an invalid value."""
