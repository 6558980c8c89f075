"""Expected failures, each carrying the message a user should read.

The CLI prints `FactoryError.message` and exits with `exit_code`, without a traceback.
Anything that is not a FactoryError is a bug and keeps its traceback.
"""

from __future__ import annotations


class FactoryError(Exception):
    """A failure the user can act on. `message` says what went wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(FactoryError):
    """The command line itself is wrong: a missing path, an unreadable file, bad options."""

    exit_code = 2


class SpecError(FactoryError):
    """One or more task specs are invalid. `problems` holds every one found."""

    def __init__(self, problems: list[Problem]):  # noqa: F821 - see factory.spec
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SizingError(FactoryError):
    """The benchmarks or spec cannot give a safe size (too few records, beyond EBS limits)."""


class AwsError(FactoryError):
    """An AWS call failed; the message says what to do (credentials, region, permissions)."""


class PackerError(FactoryError):
    """Packer is missing, refused the template, or the build failed."""


class DockerError(FactoryError):
    """The Docker engine cannot be reached, or refused what was asked (no such image, no such container)."""


class MeasureError(FactoryError):
    """`factory measure` cannot run or record a task: no Docker engine, a missing image or input, a failed run."""


class LocalCloudError(FactoryError):
    """The local cloud (moto's server, the build host) could not start or is not running."""
