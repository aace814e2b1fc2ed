"""The paper's state encoder as an RLlib RLModule (new API stack) for PPO with action masking.

per-stage linear encoding -> bidirectional LSTM across stages -> each stage's [H_fwd, H_bwd] concatenated with an
encoding of the global features (LIPS, cost used and remaining, task embedding) -> a per-stage MLP -> the current
stage's own policy head (one head per stage, the paper's multi-head policy), masked by ``action_mask``; a value
head reads the mean of the per-stage features.

The observation layout is ``envs.observation``'s; the mask is added to the logits as ``log(mask)`` clamped at
FLOAT_MIN, as RLlib's action-masking example does.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.torch_utils import FLOAT_MIN
from torch import nn

from envs import observation


class StageEncoderModule(TorchRLModule, ValueFunctionAPI):
    """``model_config`` keys: ``embed`` (stage encoding size), ``lstm`` (hidden size per direction), ``hidden``
    (per-stage MLP width), ``task_embed`` (global-feature encoding size)."""

    @override(TorchRLModule)
    def setup(self) -> None:
        cfg: dict[str, Any] = {"embed": 32, "lstm": 32, "hidden": 64, "task_embed": 16, **(self.model_config or {})}
        n_actions = self.action_space.n
        self.stage_embed = nn.Sequential(nn.Linear(observation.STAGE_FEATURES, cfg["embed"]), nn.Tanh())
        self.lstm = nn.LSTM(cfg["embed"], cfg["lstm"], batch_first=True, bidirectional=True)
        self.global_embed = nn.Sequential(nn.Linear(observation.GLOBAL_FEATURES, cfg["task_embed"]), nn.Tanh())
        width = 2 * cfg["lstm"] + cfg["task_embed"]
        self.stage_mlp = nn.Sequential(nn.Linear(width, cfg["hidden"]), nn.Tanh(),
                                       nn.Linear(cfg["hidden"], cfg["hidden"]), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(cfg["hidden"], n_actions) for _ in range(observation.MAX_STAGES))
        self.value_head = nn.Sequential(nn.Linear(cfg["hidden"] + cfg["task_embed"], cfg["hidden"]), nn.Tanh(),
                                        nn.Linear(cfg["hidden"], 1))
        for head in self.heads:  # near-uniform initial policy: early exploration covers the masked choices
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def _encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-stage features (B, S, hidden) and the global encoding (B, task_embed)."""
        n = observation.MAX_STAGES * observation.STAGE_FEATURES
        stages = obs[:, :n].reshape(-1, observation.MAX_STAGES, observation.STAGE_FEATURES)
        g = self.global_embed(obs[:, n:])
        h, _ = self.lstm(self.stage_embed(stages))
        per_stage = self.stage_mlp(torch.cat([h, g[:, None, :].expand(-1, h.shape[1], -1)], dim=-1))
        return per_stage, g

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs, mask = batch[Columns.OBS]["observations"], batch[Columns.OBS]["action_mask"]
        per_stage, _ = self._encode(obs)
        n = observation.MAX_STAGES * observation.STAGE_FEATURES
        current = obs[:, :n].reshape(-1, observation.MAX_STAGES, observation.STAGE_FEATURES)[..., observation.CURRENT]
        stage = current.argmax(dim=1)
        all_heads = torch.stack([head(per_stage[:, i]) for i, head in enumerate(self.heads)], dim=1)
        logits = all_heads[torch.arange(len(stage)), stage]
        return {Columns.ACTION_DIST_INPUTS: logits + torch.clamp(torch.log(mask), min=FLOAT_MIN)}

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        per_stage, g = self._encode(batch[Columns.OBS]["observations"])
        return self.value_head(torch.cat([per_stage.mean(dim=1), g], dim=-1)).squeeze(-1)
