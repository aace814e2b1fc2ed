"""The final evaluation stage (what evaluate.py reports): robustness under the attack suite (``robustness``), the
model checks before a number is reported (``checks``), one sub-network trained and attacked (``final``), the
result tables (``tables``) and the command's body (``command``). The search's cheap scoring is ``rcnas.proxy``."""
