"""What every entry point shares: user errors become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rcnas.infra.errors import RcnasError


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its code; a :class:`RcnasError` prints ``error: <message>`` and exits 2."""
    try:
        code = main()
    except RcnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: results already written are kept", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
