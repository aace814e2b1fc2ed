"""Export an evaluated network for RobustBench: weights loadable into RobustBench's own architecture class, a
``model_info`` JSON in RobustBench's fields, and a model card.

RobustBench's ``robust_resnet.PreActResNet`` (RobustResNet's network, with per-stage depths, widths, strides, kernel
sizes and activations) is the class that holds a basic-block sub-network of ours exactly: the same pre-activation
blocks under other names (``stem_conv``, ``blocks.i.layer.j``, ``shortcut.0``, ``norm1``). It takes 3-channel input,
a 3x3 stem and symmetric padding; a network it cannot hold (digits' one channel, robust blocks, whose class
RobustBench names but does not ship) is exported in rcnas's own format, and the card says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from rcnas.evaluation.final import FinalResult
from rcnas.space.arch import ArchSpec, InputShape

RB_CLASS = "robustbench.model_zoo.architectures.robust_resnet.PreActResNet"


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


def model_info(result: FinalResult, full_test_size: int, architecture: str) -> dict[str, Any]:
    """RobustBench's ``model_info`` fields. ``clean_acc`` and ``autoattack_acc`` are given only when standard
    AutoAttack ran on the whole test set (RobustBench's protocol); otherwise they are null and ``footnote`` says
    what was run, with its labels."""
    aa = result.accuracy("aa")
    full = result.n_examples >= full_test_size
    ran = "; ".join(f"{a.label} ({a.attack}, {a.steps} steps) {100 * a.accuracy:.2f}%" for a in result.attacks)
    protocol = aa is not None and full
    return {
        "name": result.name, "authors": "", "venue": "", "link": "",
        "dataset": result.dataset, "eps": result.eps_255, "threat_model": "Linf",
        "architecture": architecture, "additional_data": False, "number_forward_passes": 1,
        "clean_acc": f"{100 * result.clean:.2f}" if protocol else None,
        "autoattack_acc": f"{100 * aa:.2f}" if protocol and aa is not None else None,
        "reported": None, "unreliable": False,
        "footnote": None if protocol else (
            f"not RobustBench's protocol: {'no standard AutoAttack' if aa is None else 'AutoAttack'} on "
            f"{result.n_examples} of {full_test_size} test examples; measured by rcnas: clean "
            f"{100 * result.clean:.2f}%, {ran} (seed {result.seed}, split {result.split})"),
    }


def model_card(result: FinalResult, arch_yaml: str, kwargs: Optional[dict[str, Any]], reason: str,
               weights_file: str, full_test_size: int) -> str:
    rows = [f"| clean | - | - | {100 * result.clean:.2f} |"]
    rows += [f"| {a.label} | {a.attack} | {a.steps} | {100 * a.accuracy:.2f} |" for a in result.attacks]
    if result.worst_case is not None:
        rows.append(f"| worst case (pointwise, every attack above) | - | - | {100 * result.worst_case:.2f} |")
    prov = result.provenance
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
- **Evaluation**: {result.split} split, n = {result.n_examples} of {full_test_size}, L-inf eps = {result.eps_255},
  seed {result.seed}; attacks in fp32.
- **Code**: rcnas {prov.get("code_version", "?")}, torch {prov.get("torch", "?")}, ray {prov.get("ray", "?")},
  autoattack {prov.get("autoattack", "?")}, device {result.device}.

| attack | kind | steps | accuracy (%) |
|---|---|---|---|
{chr(10).join(rows)}

Local Lipschitz estimate (LIPS): {result.lipschitz:.2f}.

## Loading the weights

{loading}

## Architecture (RobustResNet schema)

```yaml
{arch_yaml.rstrip()}
```
"""


def export_robustbench(result: FinalResult, arch: ArchSpec, shape: InputShape, state: dict[str, torch.Tensor],
                       arch_yaml: str, full_test_size: int, folder: str | Path) -> list[Path]:
    """Write the weights, ``model_info.json``, ``architecture.json`` (when a RobustBench class holds the network)
    and ``README.md`` (the model card) under ``folder``; returns the files written."""
    from rcnas.infra.files import write_atomic
    from rcnas.train import save_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs, reason = robustbench_kwargs(arch, shape)
    weights = folder / f"{result.name}.pt"
    written = [weights]
    if kwargs is not None:
        save_atomic(to_robustbench_state(state, arch), weights)
        write_atomic(folder / "architecture.json", json.dumps({"class": RB_CLASS, "kwargs": kwargs}, indent=2))
        written.append(folder / "architecture.json")
        architecture = f"RobustResNet-style PreActResNet {result.arch}"
    else:
        save_atomic({k: v.detach().cpu() for k, v in state.items()}, weights)
        architecture = f"rcnas PreActResNet {result.arch}"
    info = model_info(result, full_test_size, architecture)
    write_atomic(folder / "model_info.json", json.dumps(info, indent=2))
    write_atomic(folder / "README.md", model_card(result, arch_yaml, kwargs, reason, weights.name, full_test_size))
    return [*written, folder / "model_info.json", folder / "README.md"]
