"""Strict YAML loading shared by every config type: ``base:`` inheritance, and pydantic errors turned into one line.

Configs read from disk are pydantic models with ``extra="forbid", frozen=True`` (see :class:`StrictModel`); an
unknown key, a wrong type or a bad value becomes a :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from rcnas.infra.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every on-disk config: unknown keys are errors, values are immutable."""

    # NaN and infinities are never a sensible setting (an infinite lr, a NaN budget): refused everywhere
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_identifier(value: Any) -> str:
    """A name that becomes a file or folder name (a task's, an experiment's): letters, digits, ``.``, ``_`` and
    ``-``, starting with a letter or digit, at most 128 characters. Nothing else reaches a path: ``../x``, ``/abs``,
    ``a/b`` and hidden names are refused here, before anything is written."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or value in {".", ".."}:
        raise ValueError(f"{value!r} is not a plain name: use letters, digits, '.', '_' and '-' (e.g. "
                         "digits-pgd-e20-t444-r35), at most 128 characters, starting with a letter or digit")
    return value


Identifier = Annotated[str, BeforeValidator(check_identifier)]
"""a config ``name:`` (it names files in the run folder)"""

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


def parse_epsilon(value: Any) -> float:
    """Read a perturbation size that carries its unit: ``"8/255"`` or any explicit fraction such as ``"1/5"``.

    A bare number is refused: ``8`` and ``0.03`` have been confused before (RobustWRN guesses ``if eps > 1``).
    """
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m and float(m.group(2)) > 0:
            eps = float(m.group(1)) / float(m.group(2))
            if not 0 < eps <= 1:
                raise ValueError(f"{value!r} = {eps:g} is outside (0, 1]: images are in [0, 1], e.g. \"8/255\"")
            return eps
    raise ValueError(
        f"{value!r} has no explicit unit: write it as a fraction of the [0, 1] pixel range, e.g. \"8/255\" or \"1/5\""
    )


Epsilon = Annotated[float, BeforeValidator(parse_epsilon)]

_SI = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_count(value: Any) -> float:
    """Read a count such as MACs: a number, or a string with an SI suffix (``"5G"``, ``"1.2M"``)."""
    count = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        count = float(value)
    elif isinstance(value, str):
        m = re.match(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMGT]?)\s*$", value, re.IGNORECASE)
        if m:
            count = float(m.group(1)) * _SI.get(m.group(2).upper(), 1.0)
    if count is None or not math.isfinite(count) or count <= 0:
        raise ValueError(f"{value!r} is not a positive count: write a number or e.g. \"5G\" / \"800K\"")
    return count


Count = Annotated[float, BeforeValidator(parse_count)]


def eps_label(eps: float) -> str:
    """ε for reports: ``8/255`` when it is a multiple of 0.1/255, else the fraction and its /255 form."""
    k = Fraction(eps * 255).limit_denominator(10)
    if abs(float(k) - eps * 255) < 1e-6 and k.denominator in (1, 2, 5, 10):
        return f"{float(k):g}/255"
    return f"{eps:g} ({eps * 255:.3g}/255)"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, following a ``base:`` key (a path relative to the file) to inherit from.

    Raises:
        ConfigError: missing file, YAML syntax error, a top level that is not a mapping, or a ``base:`` loop.
    """
    return _read(Path(path), seen=())


MAX_BASE_DEPTH = 8


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base:' loop through {', '.join(map(str, seen))}")
    if len(seen) > MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} levels of 'base:'; flatten the chain")
    if seen and path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{seen[-1]}: base: {path} is not a .yaml file; 'base:' names another config")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read(path.parent / str(base), seen + (path.resolve(),))
    return deep_merge(parent, data)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(cls: type[M], data: dict[str, Any], where: str) -> M:
    """``cls.model_validate(data)`` with the first problem as one :class:`ConfigError` line naming ``where``."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(cls, err["loc"][:-1])
            msg = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {loc}: {msg}{more}") from None


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            args = [a for a in getattr(model, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not args:
                return []
            model = args[0]
    return sorted(model.model_fields)


def load_config(path: str | Path, cls: type[M]) -> M:
    """Load and validate a YAML config file strictly.

    Example:
        >>> task = load_config("configs/tasks/digits-pgd-e20-t444-r35.yaml", TaskConfig)  # rcnas.config.TaskConfig
    """
    return validate(cls, read_yaml(path), str(path))
