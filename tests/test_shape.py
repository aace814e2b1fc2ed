"""The code's shape, checked as the layer test checks imports: no function takes more than a handful of parameters
(a long signature is complexity moved, not removed: group what travels together into a typed value)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

MAX_PARAMETERS = 8
CLI_MIRRORS = {("agents/pipeline.py", "run_search"), ("rcnas/evaluation/command.py", "evaluate")}
"""the public entry points whose keyword-only parameters are the CLI's flags (train.py, evaluate.py): only their
positional parameters count"""


def parameter_counts() -> list[tuple[int, str]]:
    found = []
    for top in ("rcnas", "agents", "envs"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = node.args
                positional = [p.arg for p in a.posonlyargs + a.args if p.arg not in ("self", "cls")]
                n = len(positional) + int(a.vararg is not None)
                if (rel, node.name) not in CLI_MIRRORS:
                    n += len(a.kwonlyargs) + int(a.kwarg is not None)
                found.append((n, f"{rel}:{node.lineno} {node.name}"))
    return found


def test_no_function_takes_more_than_eight_parameters():
    over = sorted((n, where) for n, where in parameter_counts() if n > MAX_PARAMETERS)
    assert not over, f"over {MAX_PARAMETERS} parameters (group them into a dataclass): {over}"
