"""The evaluator the environment is given (injected, so the env never imports Ray); defined in rcnas so that the
baseline searchers share it."""

from rcnas.proxy.protocol import Evaluator

__all__ = ["Evaluator"]
