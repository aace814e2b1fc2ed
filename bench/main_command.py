"""Wall time and peak memory of the README's main command (run as a child process; peak RSS of the largest child).

    python bench/main_command.py            # runs the same command as `make run`
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

COMMAND = ["evaluate.py", "configs/subnets/digits/tiny-444-half.yaml",
           "--task", "configs/tasks/digits-pgd-e20-t444-r35.yaml", "--attacks", "clean,fgsm,pgd20,cw40,aa_compact"]


def main() -> None:
    out = tempfile.mkdtemp(prefix="rcnas-bench-")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *COMMAND, "--out", out, *sys.argv[1:]], check=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"main command: wall {wall:.1f} s, peak RSS {peak_mb:.0f} MB ({' '.join(COMMAND)})")


if __name__ == "__main__":
    main()
