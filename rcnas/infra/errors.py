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


class EvaluationFailed(RcnasError):
    """An evaluation failed on a worker (another process, perhaps another node): one line saying which sub-network,
    on which worker, and what went wrong. Its exit code is the cause's when the cause is a user mistake (a missing
    dataset), else 1."""

    MARKER = "rcnas evaluation failed: "
    """starts every message, so that the line can be found again inside Ray's and Tune's nested reports"""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        self.detail = " ".join(message.removeprefix(self.MARKER).split())
        super().__init__(self.MARKER + self.detail)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (EvaluationFailed, (self.detail, self.exit_code))  # crosses process boundaries with its exit code

    @classmethod
    def find(cls, text: str) -> EvaluationFailed | None:
        """The first such line in ``text`` (e.g. a Tune trial's error), as an error again."""
        for line in text.splitlines():
            at = line.find(cls.MARKER)
            if at >= 0:
                return cls(line[at + len(cls.MARKER):].strip())
        return None


class GpuNotVisible(RcnasError):
    """Ray assigned this process a GPU that torch cannot see (a driver too old for torch's CUDA build, a CPU-only
    torch, no driver at all): one line with the GPU ids, the driver version, torch's CUDA build and the fix.

    Exit code 2 (RcnasError's): the machine's setup is wrong, which its user fixes (another machine image, the
    project's Docker image); it is not a bug in rcnas, and retrying on the same node fails the same way. It is never
    papered over by computing on the CPU: a worker that holds a GPU and runs on the CPU keeps the GPU from anyone who
    could use it and is tens of times slower, with nothing but a warning to say why.
    """

    PREFIX = "a GPU was assigned by Ray"
    """starts every message, so that the line can be found again inside Ray's reports (an actor that died in its
    ``__init__`` reaches its caller as an ``ActorDiedError`` whose text holds the remote traceback, not this error)"""

    @classmethod
    def find(cls, text: str) -> GpuNotVisible | None:
        """The first such line in ``text`` (e.g. ``str()`` of a Ray error), as an error again."""
        at = text.find(cls.PREFIX)
        return cls(text[at:].splitlines()[0].strip()) if at >= 0 else None
