"""Known-harmless library noise, silenced in every process of a run unless ``--verbose``.

Installed as Ray's ``worker_process_setup_hook`` (it runs in each worker at start) and called in the driver. Only
messages that say nothing a user can act on are hidden: RLlib's notes on its own API migration, gymnasium's note
that an environment id is registered again in a reused worker, and DeprecationWarnings raised inside libraries.
Errors, and every warning of rcnas itself (printed, not logged), still show.
"""

from __future__ import annotations

import logging
import re
import warnings

NOISY_LOGGERS = ("ray.rllib", "ray._common.deprecation", "ray.tune.logger", "ray.tune.utils.util",
                 "ray.tune.trainable", "ray.tune.tune", "ray.tune.execution.experiment_state",
                 "ray.train._internal.storage", "ray._private.authentication.authentication_token_setup")
"""loggers whose WARNING-level messages are migration notes (``You are running PPO on the new API stack``,
``RLModule(config=...) has been deprecated``), hints that do not apply (``Install gputil``, ``Trainable.setup took
11 s``: a PPO trial is built once per stage; ``Experiment state snapshotting has been triggered multiple times``:
a stage checkpoints every iteration on purpose), bookkeeping (``Wrote the latest version of all result files``) or
a note that token authentication is on, as it must be (its advice, to switch it off, is one rcnas refuses);
their errors still show"""


def quiet() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*Overriding environment .* already in registry")
    warnings.filterwarnings("ignore", message=r".*Install gputil for GPU system monitoring")


HARMLESS_WORKER_LINES = (
    # RLlib (env runners) and Tune (the W&B logging actor) build restartable actors whose arguments sit in the
    # object store; Ray's core worker logs that at error level for each, although nothing failed
    # (ray-project/ray#53727)
    re.compile(r"core_worker\.cc:\d+: Actor with class name: '\w+' .* has constructor arguments in the "
               r"object store and max_restarts > 0"),
)
"""worker log lines the driver drops unless ``--verbose``"""
_IGNORED = re.compile(r"Exception ignored in(?: atexit callback)?: <function (?:[\w.]+\.__del__|"
                      r"_start_and_connect_service\.<locals>\.teardown_atexit)")
"""tracebacks Python itself reports as ignored, at a worker's exit: a finaliser (``__del__``: RLlib's env runners and
learner group) running after Ray shut its worker down, W&B's service teardown after Ray ended the service process
(its offline run is already written)"""


def harmless_dropped(lines: list[str]) -> list[str]:
    """``lines`` (one batch of a worker's output) without the known-harmless ones: the lines above, and the
    ignored exit-time tracebacks of ``_IGNORED``."""
    kept: list[str] = []
    skipping = False
    for line in lines:
        if _IGNORED.search(line):
            skipping = True
            continue
        if skipping:
            if line.startswith((" ", "\t", "Traceback")):
                continue
            skipping = False
            continue  # the exception's own line ends the ignored block
        if not any(p.search(line) for p in HARMLESS_WORKER_LINES):
            kept.append(line)
    return kept
