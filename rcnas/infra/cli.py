"""What every entry point shares: user errors become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rcnas.infra.errors import RcnasError

RESUME_HINT: list[str] = []
"""set by a command once it knows how it would be resumed (its run folder): printed when it is interrupted"""


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its code; a :class:`RcnasError` prints ``error: <message>`` and exits with its
    code (2 for a user mistake); Ctrl-C ends with one line saying how to resume."""
    try:
        code = main()
    except RcnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        hint = f"; resume with: {RESUME_HINT[-1]}" if RESUME_HINT else ""
        print(f"interrupted: results already written are kept{hint}", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
