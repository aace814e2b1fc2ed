"""Published checkpoints loaded into our ``PreActResNet``: one renaming function per format of
``rcnas.vocab.WEIGHTS_FORMATS``, and one strict loader around them.

The formats differ only in names (and in wiring, which the task's teacher takes from the format when it is
resolved, see ``rcnas.task``); the tensors themselves are used as they are. The loader is strict the way a
reviewer would be: every tensor of the file is used, every tensor of the network comes from the file, every shape
matches, and the first problem is one line naming the file and the key. Nothing in a file is ever executed: it is
read with ``weights_only=True``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from rcnas.infra.errors import ConfigError
from rcnas.models.builder import PreActResNet
from rcnas.vocab import WEIGHTS_FORMATS, load_ref

State = dict[str, torch.Tensor]
Rename = Callable[[str], "str | None"]
"""a format's key mapping: the file's key -> ours, or None for a tensor that is not the network's"""
EXTRAS = ("mu", "sigma")
"""tensors a format may carry besides the network's: RobustResNet's stored input mean and std"""

_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "ema")
"""keys under which training scripts nest the state dict (RobustBench's loader looks under ``state_dict`` too)"""

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]


def _by_rules(key: str, rules: list[Rule], dropped: tuple[str, ...] = ()) -> str | None:
    """``key`` renamed by the first ``(regex, replacement)`` matching all of it (a ``re`` template or a function of
    the match), None when it matches ``dropped``, else unchanged."""
    if any(re.fullmatch(p, key) for p in dropped):
        return None
    for pattern, repl in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return key


def own(key: str) -> str | None:
    return key


def wideresnet(key: str) -> str | None:
    """TRADES' WideResNet: ``conv1``, ``block{1,2,3}.layer.{j}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``,
    ``fc``. Its optional ``sub_block1`` is built but never called in ``forward``: left out, as unused."""
    return _by_rules(key, [
        (r"conv1\.(.*)", r"stem.\1"),
        (r"block(\d)\.layer\.(\d+)\.convShortcut\.(.*)", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}"),
        (r"block(\d)\.layer\.(\d+)\.(.*)", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
        (r"bn1\.(.*)", r"head_norm.\1"),
    ], dropped=(r"sub_block1\..*",))


_DM_INNER = {"batchnorm_0": "bn1", "conv_0": "conv1", "batchnorm_1": "bn2", "conv_1": "conv2"}


def dm_wideresnet(key: str) -> str | None:
    """DeepMind's WideResNet: ``init_conv``, ``layer.{i}.block.{j}.{batchnorm_0,conv_0,batchnorm_1,conv_1,
    shortcut}``, ``batchnorm``, ``logits``. Its mean/std are not in the file (non-persistent buffers)."""
    return _by_rules(key, [
        (r"init_conv\.(.*)", r"stem.\1"),
        (r"layer\.(\d+)\.block\.(\d+)\.([a-z_]+\d?)\.(.*)",
         lambda m: f"stages.{m[1]}.{m[2]}.{_DM_INNER.get(m[3], m[3])}.{m[4]}"),
        (r"batchnorm\.(.*)", r"head_norm.\1"),
        (r"logits\.(.*)", r"fc.\1"),
    ])


def robustresnet(key: str) -> str | None:
    """RobustResNet's PreActResNet: ``stem_conv``, ``blocks.{i}.layer.{j}.*`` (``shortcut.0``; a robust block with one
    scale has a single ``conv2``/``bn3``), ``norm1``, ``fc``, and ``mu``/``sigma`` when it standardises inputs."""
    return _by_rules(key, [
        (r"stem_conv\.(.*)", r"stem.\1"),
        (r"blocks\.(\d+)\.layer\.(\d+)\.shortcut\.0\.(.*)", r"stages.\1.\2.shortcut.\3"),
        (r"blocks\.(\d+)\.layer\.(\d+)\.(.*)", r"stages.\1.\2.\3"),
        (r"norm1\.(.*)", r"head_norm.\1"),
    ], dropped=EXTRAS)


def read_state(path: str | Path) -> State:
    """The state dict in ``path``, unwrapped from a training script's dict and from DataParallel's ``module.``
    prefix; loaded with ``weights_only=True`` (a file holding Python objects beyond tensors is refused)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged, not torch's format, or a pickle holding more than tensors
        raise ConfigError(f"{path}: not a weights file that loads safely ({type(exc).__name__}); rcnas never runs "
                          "code from a checkpoint: save its state dict alone with torch.save(model.state_dict())"
                          ) from None
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not isinstance(state.get(key),
                                                                                          torch.Tensor):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds a {type(state).__name__} that is not a state dict of tensors (looked "
                          f"under {', '.join(_WRAPPERS)} too)")
    # DataParallel's ``module.`` and a wrapper's ``model.`` prefixes (RobustBench strips both as well)
    for prefix in ("module.", "model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: PreActResNet, path: str | Path, fmt: str, name: str = "the teacher") -> dict[str, object]:
    """Load ``path`` (in format ``fmt``) into ``model`` strictly.

    Returns:
        what was imported, for the teacher's record (format, tensors loaded, tensors left out as unused).

    Raises:
        ConfigError: one line naming the file and the first key that is missing, extra, or of the wrong shape, or
            a stored input standardisation that differs from the architecture's.
    """
    rename: Rename = load_ref(WEIGHTS_FORMATS.get(fmt).impl)
    raw = read_state(path)
    own_state = model.state_dict()
    state: State = {}
    origin: dict[str, str] = {}  # our key -> the file's, so that errors name what the user can find in the file
    unused: list[str] = []
    for key, tensor in raw.items():
        ours = rename(key)
        if ours is None:
            unused.append(key)
            continue
        ours = _as_module_list(ours, own_state)
        state[ours], origin[ours] = tensor, key
    _check_standardisation(model, {k: raw[k] for k in EXTRAS if k in raw}, path)
    for key in sorted(set(own_state) | set(state), key=_natural):
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own_state[key]  # files from before PyTorch 0.4.1 lack it; eval never reads it
            continue
        theirs = origin.get(key, key) if fmt != "rcnas" else key
        named = repr(theirs) if theirs == key else f"{theirs!r} (our {key!r})"
        if key not in state:
            raise ConfigError(f"{path}: {named} is missing from the file; is it a {fmt} checkpoint of {name} "
                              f"({model.arch.short()})?")
        if key not in own_state:
            raise ConfigError(f"{path}: {named} is not a tensor of {name} ({model.arch.short()}); is it a {fmt} "
                              "checkpoint of this architecture?")
        if tuple(state[key].shape) != tuple(own_state[key].shape):
            raise ConfigError(f"{path}: {named} has shape {tuple(state[key].shape)}, {name} "
                              f"({model.arch.short()}) needs {tuple(own_state[key].shape)}")
    model.load_state_dict(state)
    return {"format": fmt, "tensors": len(state), "unused": sorted(k for k in unused if k not in EXTRAS)}


def _as_module_list(key: str, own_state: State) -> str:
    """``...conv2.weight`` -> ``...conv2.0.weight`` where we hold a one-element list and the file a single module
    (RobustResNet's robust block with one scale)."""
    if key in own_state:
        return key
    listed = re.sub(r"\.(conv2|bn3)\.([a-z_]+)$", r".\1.0.\2", key)
    return listed if listed in own_state else key


def _natural(key: str) -> list[object]:
    """Sort ``stages.10`` after ``stages.9``: the first bad key reported is the first in the network."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _check_standardisation(model: PreActResNet, extras: dict[str, torch.Tensor], path: str | Path) -> None:
    """A file that stores its input mean/std must agree with the architecture's (then the network computes the same
    function); one that stores it while the architecture has none is one clear error saying what to declare."""
    if "mu" not in extras and "sigma" not in extras:
        return
    mu = extras.get("mu", torch.zeros(1)).flatten().tolist()
    sigma = extras.get("sigma", torch.ones(1)).flatten().tolist()
    declared = model.arch.input_norm
    if declared is None:
        raise ConfigError(f"{path}: the network standardises its input (mean {_fmt(mu)}, std {_fmt(sigma)}); add "
                          f"teacher_weights.input_normalization: {{mean: {_fmt(mu)}, std: {_fmt(sigma)}}} to the task")
    if not (torch.allclose(torch.tensor(declared[0]), torch.tensor(mu), atol=1e-6)
            and torch.allclose(torch.tensor(declared[1]), torch.tensor(sigma), atol=1e-6)):
        raise ConfigError(f"{path}: the file standardises with mean {_fmt(mu)}, std {_fmt(sigma)}; the teacher "
                          f"declares mean {_fmt(declared[0])}, std {_fmt(declared[1])}")


def _fmt(values: object) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"  # type: ignore[attr-defined]
