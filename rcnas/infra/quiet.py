"""Known-harmless library noise, silenced in every process of a run unless ``--verbose``.

Installed as Ray's ``worker_process_setup_hook`` (it runs in each worker at start) and called in the driver. Only
messages that say nothing a user can act on are hidden: RLlib's notes on its own API migration, gymnasium's note
that an environment id is registered again in a reused worker, and DeprecationWarnings raised inside libraries.
Errors, and every warning of rcnas itself (printed, not logged), still show.
"""

from __future__ import annotations

import logging
import warnings

NOISY_LOGGERS = ("ray.rllib", "ray._common.deprecation", "ray.tune.logger", "ray.tune.utils.util",
                 "ray.tune.trainable", "ray.tune.tune", "ray.tune.execution.experiment_state",
                 "ray.train._internal.storage")
"""loggers whose WARNING-level messages are migration notes (``You are running PPO on the new API stack``,
``RLModule(config=...) has been deprecated``), hints that do not apply (``Install gputil``, ``Trainable.setup took
11 s``: a PPO trial is built once per stage; ``Experiment state snapshotting has been triggered multiple times``:
a stage checkpoints every iteration on purpose) or bookkeeping (``Wrote the latest version of all result files``);
their errors still show"""


def quiet() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*Overriding environment .* already in registry")
    warnings.filterwarnings("ignore", message=r".*Install gputil for GPU system monitoring")
