"""Export an evaluated network for RobustBench: weights loadable into RobustBench's own architecture class, a
``model_info`` JSON in RobustBench's fields, and a model card.

RobustBench's ``robust_resnet.PreActResNet`` (RobustResNet's network, with per-stage depths, widths, strides, kernel
sizes and activations) is the class that holds a basic-block sub-network of ours exactly: the same pre-activation
blocks under other names (``stem_conv``, ``blocks.i.layer.j``, ``shortcut.0``, ``norm1``). It takes 3-channel input,
a 3x3 stem and symmetric padding; a network it cannot hold (digits' one channel, robust blocks, whose class
RobustBench names but does not ship) is exported in rcnas's own format, and the card says why.

An export ships exactly the weights its numbers were measured with: the state dict given must hash equal to the
result's ``weights_sha256`` (the state attacked), and the file written is read back and checked, or nothing is
exported. Every figure carries its number of test examples beside it; a subset of the dataset's whole test split
(``--n-examples``, or a truncated test folder) is footnoted and never given as RobustBench-protocol numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from rcnas.evaluation.final import FinalResult
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import sha256_file
from rcnas.infra.provenance import state_sha256
from rcnas.space.arch import ArchSpec, InputShape

RB_CLASS = "robustbench.model_zoo.architectures.robust_resnet.PreActResNet"

FULL_TEST_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "tiny-imagenet": 10_000, "digits": 359}
"""the size of each dataset's whole test split as published (Tiny-ImageNet: its labelled ``val``; digits: our fixed
20% split); a test folder holding fewer images is truncated"""


def full_test_size(dataset: str, loaded: int) -> int:
    """The whole test split's size: the published one, whatever a (possibly truncated) folder on disk holds;
    ``loaded`` (what the folder holds) for a dataset without a published size."""
    return FULL_TEST_SIZES.get(dataset, loaded)


def library_version(provenance: dict[str, Any], distribution: str, *old_keys: str) -> str:
    """A library's version as a result recorded it (its PyPI distribution name, as ``rcnas.infra.provenance``
    records it), or "not recorded"."""
    for key in (distribution, *old_keys):
        if provenance.get(key):
            return str(provenance[key])
    return "not recorded"


def robustbench_kwargs(arch: ArchSpec, shape: InputShape) -> tuple[Optional[dict[str, Any]], str]:
    """The constructor arguments of RobustBench's class that hold ``arch`` exactly, or None and the reason."""
    if shape.channels != 3:
        return None, f"RobustBench's networks take 3-channel images; {shape.channels}-channel input here"
    if any(s.block != "basic_block" for s in arch.stages):
        return None, "RobustBench ships no robust-block class (its robust_resnet module names one it does not define)"
    if any(s.normalization != "BatchNorm" for s in arch.stages):
        return None, "normalisations other than BatchNorm"
    if arch.downsample_padding != "symmetric":
        return None, "bottom-right padding of strided convs (RobustBench's class pads symmetrically)"
    return {
        "num_classes": shape.num_classes, "channel_configs": [arch.stem_channels, *arch.channels],
        "depth_configs": list(arch.depths), "stride_config": [s.stride for s in arch.stages],
        "stem_stride": arch.stem_stride, "kernel_size_configs": [s.kernel_size for s in arch.stages],
        "block_types": list(arch.blocks), "activations": [s.activation for s in arch.stages],
        "normalizations": ["BatchNorm"] * len(arch.stages), "use_init": False,
        "pre_process": arch.input_norm is not None,
    }, ""


def to_robustbench_state(state: dict[str, torch.Tensor], arch: ArchSpec) -> dict[str, torch.Tensor]:
    """Our state dict under RobustBench's names (the inverse of the ``robustresnet`` import), with the input
    standardisation as its ``mu``/``sigma`` buffers when the network has one."""
    import re

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("input_mean", "input_std"):
            continue
        new = re.sub(r"^stem\.", "stem_conv.", key)
        new = re.sub(r"^stages\.(\d+)\.(\d+)\.shortcut\.", r"blocks.\1.layer.\2.shortcut.0.", new)
        new = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"blocks.\1.layer.\2.", new)
        new = re.sub(r"^head_norm\.", "norm1.", new)
        out[new] = value.detach().cpu().clone()
    if arch.input_norm is not None:
        mean, std = arch.input_norm
        out["mu"] = torch.tensor(mean).view(-1, 1, 1)
        out["sigma"] = torch.tensor(std).view(-1, 1, 1)
    return out


def is_full(result: FinalResult, full_test_size: int) -> bool:
    """Every figure of ``result`` was measured on the whole test split."""
    return min([result.n_examples, *(a.n_examples for a in result.attacks)]) >= full_test_size


def figures(result: FinalResult, full_test_size: int) -> list[dict[str, Any]]:
    """Every figure measured, each with the number of test examples it was measured on and whether that is the
    whole test split."""
    def row(label: str, attack: str, steps: int, accuracy: float, n: int) -> dict[str, Any]:
        return {"label": label, "attack": attack, "steps": steps, "accuracy": f"{100 * accuracy:.2f}",
                "n_examples": n, "full_test_size": full_test_size, "full_test_split": n >= full_test_size}

    rows = [row("clean", "-", 0, result.clean, result.n_examples)]
    rows += [row(a.label, a.attack, a.steps, a.accuracy, a.n_examples) for a in result.attacks]
    if result.worst_case is not None:
        rows.append(row("worst_case", "pointwise, every attack above", 0, result.worst_case, result.n_examples))
    return rows


def footnote(result: FinalResult, full_test_size: int) -> Optional[str]:
    """Why the figures are not RobustBench's protocol (standard AutoAttack on the whole test split), or None."""
    why = []
    if not is_full(result, full_test_size):
        why.append(f"a truncated test set: {result.n_examples} of the {full_test_size} test examples")
    if result.accuracy("aa") is None:
        why.append("no standard AutoAttack")
    if not why:
        return None
    ran = "; ".join(f"{a.label} ({a.attack}, {a.steps} steps) {100 * a.accuracy:.2f}% (n = {a.n_examples})"
                    for a in result.attacks)
    return (f"not RobustBench's protocol: {' and '.join(why)}; measured by rcnas on {result.n_examples} of "
            f"{full_test_size} test examples: clean {100 * result.clean:.2f}%, {ran} (seed {result.seed}, split "
            f"{result.split})")


def model_info(result: FinalResult, full_test_size: int, architecture: str) -> dict[str, Any]:
    """RobustBench's ``model_info`` fields, plus the number of test examples and every figure measured with its
    own. ``clean_acc`` and ``autoattack_acc`` are given only when standard AutoAttack ran on the whole test split
    (RobustBench's protocol; ``full_test_size`` is the published split's size, not a truncated folder's);
    otherwise they are null and ``footnote`` says what was run, on how many examples, with its labels."""
    aa = result.accuracy("aa")
    note = footnote(result, full_test_size)
    protocol = note is None and aa is not None
    return {
        "name": result.name, "authors": "", "venue": "", "link": "",
        "dataset": result.dataset, "eps": result.eps_255, "threat_model": "Linf",
        "architecture": architecture, "additional_data": False, "number_forward_passes": 1,
        "clean_acc": f"{100 * result.clean:.2f}" if protocol else None,
        "autoattack_acc": f"{100 * aa:.2f}" if protocol and aa is not None else None,
        "n_examples": result.n_examples, "full_test_size": full_test_size,
        "full_test_split": is_full(result, full_test_size),
        "reported": None, "unreliable": False,
        "footnote": note,
        "measured": figures(result, full_test_size),
    }


def model_card(result: FinalResult, arch_yaml: str, kwargs: Optional[dict[str, Any]], reason: str,
               weights_file: str, full_test_size: int, file_hash: str = "") -> str:
    def n(count: int) -> str:
        return f"{count} of {full_test_size}" + ("" if count >= full_test_size else " *")

    rows = [f"| clean | - | - | {100 * result.clean:.2f} | {n(result.n_examples)} |"]
    rows += [f"| {a.label} | {a.attack} | {a.steps} | {100 * a.accuracy:.2f} | {n(a.n_examples)} |"
             for a in result.attacks]
    if result.worst_case is not None:
        rows.append(f"| worst case (pointwise, every attack above) | - | - | {100 * result.worst_case:.2f} | "
                    f"{n(result.n_examples)} |")
    note = footnote(result, full_test_size)
    notes = "" if note is None else f"\n\nNote: {note[0].upper()}{note[1:]}."
    if not is_full(result, full_test_size):
        notes += (f"\n\n\\* A truncated test set: measured on the first {result.n_examples} of the "
                  f"{full_test_size} {result.dataset} test examples, not the whole split; these are not "
                  "RobustBench-protocol numbers.")
    prov = result.provenance
    shipped = (f"`{weights_file}`" + (f" (file sha256 {file_hash})" if file_hash else "")
               + f", the weights evaluated (state sha256 {result.weights_sha256 or 'not recorded'})")
    code = ", ".join(f"{name} {library_version(prov, *keys)}" for name, keys in
                     [("rcnas", ("code_version",)), ("torch", ("torch",)), ("ray", ("ray",)),
                      ("pyautoattack", ("pyautoattack", "autoattack"))]) + f", device {result.device}"
    loading = (f"```python\nimport torch\nfrom robustbench.model_zoo.architectures.robust_resnet import "
               f"PreActResNet\n\nmodel = PreActResNet(**{json.dumps(kwargs)})\n"
               f"model.load_state_dict(torch.load(\"{weights_file}\", weights_only=True))\n```"
               if kwargs else f"No RobustBench class holds this network ({reason}); `{weights_file}` is in rcnas's "
                              "format: `rcnas.build_model(arch, shape)` and `load_state_dict`.")
    return f"""# {result.name}

A sub-network found and evaluated with rcnas: {result.arch} on {result.dataset}, task `{result.task}`.

- **Size**: {result.params:,} parameters, {result.macs:,} MACs (multiply-accumulates per image, counted in closed
  form).
- **Training**: {json.dumps(result.train)}; seed {result.seed}.
- **Evaluation**: {result.split} split, n = {result.n_examples} of {full_test_size}{
    "" if is_full(result, full_test_size) else " (a truncated test set)"}, L-inf eps = {result.eps_255},
  seed {result.seed}; attacks in fp32.
- **Weights**: {shipped}.
- **Code**: {code}.

| attack | kind | steps | accuracy (%) | test examples |
|---|---|---|---|---|
{chr(10).join(rows)}{notes}

Local Lipschitz estimate (LIPS): {result.lipschitz:.2f}.

## Loading the weights

{loading}

## Architecture (RobustResNet schema)

```yaml
{arch_yaml.rstrip()}
```
"""


def check_measured(result: FinalResult, state: dict[str, torch.Tensor], source: str) -> None:
    """``state`` is the state ``result`` was measured with (equal :func:`state_sha256`), or one line says why not."""
    if not result.weights_sha256:
        raise ConfigError(f"--export: the result of {result.name} records no hash of the weights it was measured "
                          "with (an older rcnas computed it); evaluate it again into a new --out, then export")
    got = state_sha256(state)
    if got != result.weights_sha256:
        raise ConfigError(f"--export: {source} (state sha256 {got[:16]}) is not the weights {result.name} was "
                          f"measured with (state sha256 {result.weights_sha256[:16]}); refusing to export other "
                          "weights than those measured: evaluate them again, then export")


def export_robustbench(result: FinalResult, arch: ArchSpec, shape: InputShape, state: dict[str, torch.Tensor],
                       arch_yaml: str, full_test_size: int, folder: str | Path,
                       source: str = "the weights given") -> list[Path]:
    """Write the weights, ``model_info.json``, ``architecture.json`` (when a RobustBench class holds the network)
    and ``README.md`` (the model card) under ``folder``; returns the files written.

    ``state`` (rcnas's tensor names) must be the state ``result`` was measured with (its ``weights_sha256``; named
    ``source`` in the error), and the weights file is read back and checked before anything else is written.

    Raises:
        ConfigError: other weights than those measured, or a weights file that does not read back equal.
    """
    from rcnas.infra.files import write_atomic
    from rcnas.train import save_atomic

    check_measured(result, state, source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs, reason = robustbench_kwargs(arch, shape)
    weights = folder / f"{result.name}.pt"
    written = [weights]
    shipped = (to_robustbench_state(state, arch) if kwargs is not None
               else {k: v.detach().cpu().clone() for k, v in state.items()})
    save_atomic(shipped, weights)
    if state_sha256(torch.load(weights, map_location="cpu", weights_only=True)) != state_sha256(shipped):
        weights.unlink(missing_ok=True)
        raise ConfigError(f"--export: {weights} did not read back as the weights written; nothing exported")
    if kwargs is not None:
        write_atomic(folder / "architecture.json", json.dumps({"class": RB_CLASS, "kwargs": kwargs}, indent=2))
        written.append(folder / "architecture.json")
        architecture = f"RobustResNet-style PreActResNet {result.arch}"
    else:
        architecture = f"rcnas PreActResNet {result.arch}"
    file_hash = sha256_file(weights)
    info = {**model_info(result, full_test_size, architecture), "weights_file": weights.name,
            "weights_sha256": file_hash, "evaluated_state_sha256": result.weights_sha256}
    write_atomic(folder / "model_info.json", json.dumps(info, indent=2))
    write_atomic(folder / "README.md", model_card(result, arch_yaml, kwargs, reason, weights.name, full_test_size,
                                                  file_hash))
    return [*written, folder / "model_info.json", folder / "README.md"]
