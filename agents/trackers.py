"""Experiment trackers (MLflow, Weights & Biases) as Tune callbacks, from the experiment's ``trackers`` section.

Each PPO stage is one Tune experiment with one trial: it becomes one tracker run (tagged with the stage) holding
every iteration's PPO and ``rcnas/*`` metrics. Defaults keep everything on the machine: MLflow writes a file store
in the run folder, W&B runs offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.config import ExperimentConfig


def tracker_callbacks(exp: ExperimentConfig, out: Path, stage: str) -> list[Any]:
    cbs: list[Any] = []
    t = exp.trackers
    if t.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = t.mlflow.tracking_uri
        if uri is None:
            import os

            # a file store needs no server and no database driver (mlflow-skinny has none); MLflow 3 asks for
            # this opt-in to use one
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (out / "mlflow").resolve().as_uri()
        cbs.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=t.mlflow.experiment_name
                                        or f"rcnas-{exp.name}", tags={"rcnas.stage": stage}))
    if t.wandb is not None:
        import os

        from ray.air.integrations.wandb import WandbLoggerCallback

        # Ray's callback asks for an API key unless W&B's own variable says offline; the config decides it
        os.environ["WANDB_MODE"] = t.wandb.mode
        folder = out / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        cbs.append(WandbLoggerCallback(project=t.wandb.project, group=f"{exp.name}-{stage}", mode=t.wandb.mode,
                                       entity=t.wandb.entity, dir=str(folder.resolve()), tags=[stage]))
    return cbs
