"""The closed vocabularies of rcnas, one registry each: block types, attack kinds and the evaluation suite's
labels. Every layer (configs, the cost model, the environment's observation, models, attacks, reports) reads these
tables instead of spelling the names again.

Torch-free: configs and the cost model validate against it. Implementations are named here as lazy
``"module:attribute"`` references and imported on first use, as the dataset registry does with its loaders, so
adding an attack is one entry below plus its function.

Registration order is part of the observation layout (the task descriptor one-hot encodes the attack kind in this
order): append new entries at the end. The layout is saved with every meta-training checkpoint and checked on load,
so a reordering is one clear error instead of a silently wrong policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Optional

from rcnas.infra.registry import Registry


def load_ref(ref: str) -> Any:
    """Import ``"package.module:attribute"``."""
    module, _, attribute = ref.partition(":")
    return getattr(import_module(module), attribute)


# -- block types -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockKind:
    """A residual block type, named as RobustResNet's YAML files name it."""

    name: str
    letter: str
    """its letter in a sub-network's short name (``D4-4-2 C32-64-64 bbr``)"""
    expansion: int
    """output channels per plane (a bottleneck's expansion)"""
    robust: bool
    """the multi-scale robust block: takes :class:`rcnas.space.arch.RobustBlockParams`; the observation's flag"""
    module: str
    """``"module:class"`` of its ``nn.Module`` (imported lazily: the cost model must not need torch)"""


BLOCK_KINDS: Registry[BlockKind] = Registry("block type")
BASIC_BLOCK = "basic_block"
ROBUST_BLOCK = "robust_res_block"
BLOCK_KINDS.add(BASIC_BLOCK, BlockKind(BASIC_BLOCK, "b", 1, False, "rcnas.models.blocks:PreActBasicBlock"))
BLOCK_KINDS.add(ROBUST_BLOCK, BlockKind(ROBUST_BLOCK, "r", 4, True, "rcnas.models.blocks:RobustResBlock"))


# -- attacks -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackKind:
    """An L-inf attack an :class:`rcnas.config.AttackConfig` can name."""

    name: str
    description: str
    iterative: bool
    """``steps`` applies (reports print "(N steps)")"""
    whole_set: bool
    """runs over the whole evaluation set in one call (AutoAttack's own batching and bookkeeping)"""
    impl: str
    """``"module:function"`` with the signature ``(model, x, y, cfg, ctx) -> x_adv``"""


ATTACK_KINDS: Registry[AttackKind] = Registry("attack")
_IMPL = "rcnas.attacks.library"
for _kind in (
    AttackKind("fgsm", "one signed-gradient step of size epsilon", False, False, f"{_IMPL}:fgsm_attack"),
    AttackKind("pgd", "PGD on the cross-entropy loss", True, False, f"{_IMPL}:pgd_attack"),
    AttackKind("cw", "PGD on the Carlini-Wagner margin loss (CW-inf)", True, False, f"{_IMPL}:cw_attack"),
    AttackKind("aa", "AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)", True, True,
               f"{_IMPL}:autoattack_standard"),
    AttackKind("aa_compact", "AutoAttack's APGD-CE + APGD-T only (never reported as aa)", True, True,
               f"{_IMPL}:autoattack_compact"),
):
    ATTACK_KINDS.add(_kind.name, _kind)


# -- the evaluation suite ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteEntry:
    """A reported attack of the final evaluation protocol, at whatever epsilon the task sets."""

    label: str
    kind: Optional[str]
    """an :data:`ATTACK_KINDS` name; None for clean accuracy"""
    steps: int = 1
    step_fraction: Optional[float] = None
    """step size as a fraction of epsilon (PGD-20 / CW-40: eps / 10, i.e. 0.8/255 at 8/255)"""
    random_start: bool = True


SUITE: Registry[SuiteEntry] = Registry("evaluation attack")
for _entry in (
    SuiteEntry("clean", None),
    SuiteEntry("fgsm", "fgsm", 1, random_start=False),
    SuiteEntry("pgd20", "pgd", 20, 0.1),
    SuiteEntry("cw40", "cw", 40, 0.1),
    SuiteEntry("aa", "aa", 100),
    SuiteEntry("aa_compact", "aa_compact", 100),
):
    SUITE.add(_entry.label, _entry)

DEFAULT_SUITE = ("clean", "fgsm", "pgd20", "cw40", "aa")
"""evaluate.py's default attacks"""


# -- layers named in sub-network files ---------------------------------------------------------------------------
# As RobustResNet's YAML files spell them (so their configs load unchanged), each a lazy ``"module:class"``.
ACTIVATION_KINDS: Registry[str] = Registry("activation")
for _name, _ref in (("ReLU", "torch.nn:ReLU"), ("SiLU", "torch.nn:SiLU"), ("GELU", "torch.nn:GELU"),
                    ("Softplus", "torch.nn:Softplus")):
    ACTIVATION_KINDS.add(_name, _ref)
NORMALIZATION_KINDS: Registry[str] = Registry("normalization")
NORMALIZATION_KINDS.add("BatchNorm", "torch.nn:BatchNorm2d")


# -- teacher weights formats -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsFormat:
    """A checkpoint naming a task's ``teacher_weights`` can be in, and the wiring its networks were trained with
    (applied to the declared teacher's architecture, so the same function is computed)."""

    name: str
    description: str
    impl: str
    """``"module:function"`` mapping the file's state dict onto a ``PreActResNet``'s names"""
    downsample_padding: Optional[str] = None
    """``rcnas.space.arch.ArchSpec.downsample_padding`` of its networks; None: as the declared teacher says"""
    conv1_input: Optional[str] = None
    """what a robust block's first conv reads (``rcnas.space.arch.RobustBlockParams``); None: as declared"""
    needs_input_normalization: bool = False
    """the network standardises its input but the file does not say how: the mean/std must be declared"""


WEIGHTS_FORMATS: Registry[WeightsFormat] = Registry("weights format")
_IMPORTS = "rcnas.models.imports"
for _fmt in (
    WeightsFormat("rcnas", "a PreActResNet of this project (e.g. a cached teacher's model.pt)", f"{_IMPORTS}:own"),
    WeightsFormat("wideresnet", "the TRADES WideResNet (RobustBench's wide_resnet.WideResNet)",
                  f"{_IMPORTS}:wideresnet", downsample_padding="symmetric"),
    WeightsFormat("dm-wideresnet", "DeepMind's WideResNet (RobustBench's dm_wide_resnet.DMWideResNet)",
                  f"{_IMPORTS}:dm_wideresnet", downsample_padding="bottom_right", needs_input_normalization=True),
    WeightsFormat("robustresnet", "RobustResNet's PreActResNet (its repository and RobustBench's robust_resnet)",
                  f"{_IMPORTS}:robustresnet", downsample_padding="symmetric", conv1_input="raw"),
):
    WEIGHTS_FORMATS.add(_fmt.name, _fmt)
