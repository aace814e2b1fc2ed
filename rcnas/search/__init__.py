"""Baseline searchers on the same footing as the agent: same space, budget wall, evaluator and store."""
