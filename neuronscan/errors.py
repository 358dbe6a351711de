"""The exceptions neuronscan raises for problems a user can fix.

The CLI prints these as one clear message (no traceback) and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["NeuronscanError", "ConfigError", "InputError", "ModelError", "NoImagesError", "RunMismatchError"]


class NeuronscanError(Exception):
    """Base class for user-facing errors."""


class ConfigError(NeuronscanError, ValueError):
    """A configuration file or override is invalid; the message lists every problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        lines = [f"{source}: {len(self.problems)} {noun}"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class InputError(NeuronscanError, ValueError):
    """Probe images, manifests or labels cannot be used as given."""


class ModelError(NeuronscanError, ValueError):
    """A model or layer cannot be built or found."""


class NoImagesError(InputError):
    """Every input of a probe failed: there is nothing to score. The message gives the failure reasons."""


class RunMismatchError(InputError):
    """A run id was started again with settings other than those its tables were made with."""
