"""Gymnasium environments of rcnas. ``gymnasium.make("rcnas/Compression-v0", task="configs/tasks/<name>.yaml")``."""

import gymnasium

from envs.compression_env import CompressionEnv

if "rcnas/Compression-v0" not in gymnasium.registry:
    gymnasium.register(id="rcnas/Compression-v0", entry_point="envs.compression_env:CompressionEnv")

__all__ = ["CompressionEnv"]
