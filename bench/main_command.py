"""Wall time and peak memory of the README's main command (`make run` = `python train.py`), run as a child process.
Peak RSS is the largest single process among the children (the driver; Ray's workers are separate processes).

    python bench/main_command.py                  # the embedded default, output in a temporary folder
    python bench/main_command.py --smoke-test     # extra flags go to train.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

from rcnas.infra.cli import run_main


def main() -> None:
    out = tempfile.mkdtemp(prefix="rcnas-bench-")
    command = ["train.py", "--out", out, *sys.argv[1:]]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"main command: wall {wall:.1f} s, peak RSS {peak_mb:.0f} MB ({' '.join(command)})")


if __name__ == "__main__":
    run_main(main)
