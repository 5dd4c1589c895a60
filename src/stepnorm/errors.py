"""Exception types for user mistakes.

Each kind of user mistake has its own type. Every error carries the file (or dataset) at fault
and a message that reads as one line; the CLI prints ``str(error)`` and exits with code 2.
"""

from __future__ import annotations


class StepnormError(Exception):
    """Base class: a problem the user can fix (bad input, bad config, bad artifact)."""

    exit_code = 2

    def __init__(self, where: str | None, problem: str):
        self.where = where
        self.problem = problem
        text = f"{where}: {problem}" if where else problem
        super().__init__(" ".join(text.split()))


class UsageError(StepnormError):
    """The command line is wrong (e.g. an unknown Beam pipeline option)."""


class ConfigError(StepnormError):
    """The config file is invalid (unknown key, wrong type, wrong mask length, missing path)."""


class InputDataError(StepnormError):
    """A dataset file is unreadable, truncated, corrupt, or holds data we cannot use."""


class NonFiniteError(InputDataError):
    """NaN or Inf in an action or state array."""


class ArtifactError(StepnormError):
    """A stats artifact is missing, malformed, of an unknown version, or inconsistent."""


class StaleArtifactError(ArtifactError):
    """A stats artifact's fingerprint does not match the current config and datasets."""


class OutputError(StepnormError):
    """An output path stepnorm must not write to (it holds foreign files, is an input, or is busy)."""


class CacheError(StepnormError):
    """A cache entry is corrupt or of an unknown format (``--force`` rebuilds it)."""
