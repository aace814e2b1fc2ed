"""rcnas (outside rcnas.distributed) and envs import without Ray; the config layer without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def imports(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["rcnas", "rcnas.evaluation.final", "rcnas.evaluation.command", "rcnas.train",
                                    "rcnas.attacks", "rcnas.space.space", "rcnas.proxy.local",
                                    "rcnas.search.searchers", "envs"])
def test_no_ray_outside_distributed(module):
    assert "ray" not in imports(module)


def test_config_and_space_do_not_need_torch():
    mods = imports("rcnas.config, rcnas.space.space, rcnas.data.registry, rcnas.models.teachers")
    assert "torch" not in mods


# The layers of rcnas, bottom to top: a module may import its own layer and those below, never above.
LAYERS = [
    ("rcnas.infra",),
    ("rcnas.vocab",),
    ("rcnas.config", "rcnas.space.arch", "rcnas.space.cost"),
    ("rcnas.space",),
    ("rcnas.data", "rcnas.models", "rcnas.attacks", "rcnas.train", "rcnas.evaluation.checks",
     "rcnas.evaluation.robustness"),
    ("rcnas.task",),
    ("rcnas.proxy", "rcnas.reward", "rcnas.evaluation", "rcnas.search"),
    ("rcnas.distributed",),
    ("rcnas.evaluation.command", "rcnas.evaluation.jobs"),  # evaluate.py's body and its job runner: in-process,
    # or fanned out to Ray workers
]


def layer_of(module: str) -> int:
    best, found = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    return found


def rcnas_imports() -> dict[str, set[str]]:
    """Every rcnas module and the rcnas modules it imports anywhere (top level, in functions, for type checking)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in (ROOT / "rcnas").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rcnas"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("rcnas")}
        graph[name] = deps - {name}
    return graph


def test_every_module_has_a_layer_and_no_edge_goes_up():
    graph = rcnas_imports()
    unplaced = sorted(m for m in graph if m != "rcnas" and layer_of(m) < 0)
    assert not unplaced, f"give these modules a layer: {unplaced}"
    up = sorted((m, d) for m, deps in graph.items() if m != "rcnas" for d in deps if layer_of(d) > layer_of(m))
    assert not up, f"imports pointing to a higher layer: {up}"


def test_no_import_cycle():
    graph = rcnas_imports()
    # resolve "from rcnas.x import y" on a package to the package's module; drop the lazy top-level API
    graph = {m: {d for d in deps if d in graph and d != "rcnas"} for m, deps in graph.items() if m != "rcnas"}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [d] if d in stack else [m, d])
                return True
            if state.get(d) is None and visit(d, stack + [d]):
                return True
        state[m] = 2
        return False

    assert not any(visit(m, [m]) for m in sorted(graph) if state.get(m) is None), f"import cycle: {cycle}"
