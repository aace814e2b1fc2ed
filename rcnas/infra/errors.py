"""User-facing error types. Entry points turn these into one line on stderr and exit code 2."""

from __future__ import annotations


class RcnasError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""

    exit_code = 2


class ConfigError(RcnasError, ValueError):
    """A config file or CLI value is wrong: the message says what, where and how to fix it.

    A ValueError too, so that a registry lookup inside a pydantic validator reports like any other bad value.
    """


class DataNotFoundError(RcnasError):
    """A dataset is not on disk and cannot be downloaded: the message says where we looked and how to get it."""
