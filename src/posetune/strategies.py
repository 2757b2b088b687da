"""Fine-tuning strategies as registered objects: which stages freeze in which epoch, the LR of each
stage, the BN policy, and the phases a run goes through.

A strategy is one :class:`Strategy` object in :data:`STRATEGIES`; `train`, `lr-find` and `compare`
ask the object and never test a strategy's name, so adding a strategy is one :func:`register` call:

>>> plan = make_plan("partial", stages, freeze_stages=2)        # doctest: +SKIP
>>> groups = param_groups(model, stages, plan)                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posetune.backbones import Stage, module_stage_map
from posetune.errors import UsageError

BN_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)
PROBE_LR = 3e-3  # a head on cached features: the linear strategy's head LR
PROBE_EPOCHS = 30


@dataclass(frozen=True)
class HeadPhase:
    """Fit the head alone on pooled features of the frozen base, computed once (no epoch re-runs the base).
    ``lr``/``epochs`` None: the run's head LR and epochs; else fixed (LP-FT's probe), mixup and cutmix off."""

    lr: float | None = None
    epochs: int | None = None
    title: str = "a linear head on cached features"


@dataclass(frozen=True)
class FineTunePhase:
    """The epoch loop over augmented images: the stages the plan leaves trainable, at the plan's LRs."""

    title: str = "fine-tune"


@dataclass(frozen=True)
class Strategy:
    """One way to fine-tune. Subclasses override :meth:`frozen` (stages frozen at the start) and may set
    ``phases`` and :meth:`unfreeze_schedule` (stage -> first epoch it trains)."""

    name: str
    summary: str
    lr: float  # head LR default
    epochs: int
    phases: tuple = (FineTunePhase(),)
    default_layer_decay: float | None = None

    @property
    def trains_base(self) -> bool:
        """False when only the head ever trains: the run is a head on cached features (compare's probe cell)."""
        return any(isinstance(p, FineTunePhase) for p in self.phases)

    def frozen(self, stages: list[Stage], freeze_stages: int | None) -> list[str]:
        return []

    def unfreeze_schedule(self, frozen: list[str], freeze_stages: int | None, freeze_epochs: int,
                          unfreeze_every: int) -> dict[str, int]:
        return {}


def body(stages: list[Stage]) -> list[str]:
    return [s.name for s in stages if s.name != "head"]


def lower_stages(stages: list[Stage], freeze_stages: int | None) -> list[str]:
    """The stem and the first K stages (K = ``freeze_stages``, default about half)."""
    names = body(stages)
    k = default_freeze_stages(stages) if freeze_stages is None else freeze_stages
    n_stages = len(names) - 1
    if not 0 <= k <= n_stages:
        raise UsageError(f"--freeze-stages {k} is out of range: this backbone has stages 0..{n_stages}")
    return names[: 1 + k]


@dataclass(frozen=True)
class Linear(Strategy):
    phases: tuple = (HeadPhase(),)

    def frozen(self, stages, freeze_stages):
        return body(stages)


@dataclass(frozen=True)
class Partial(Strategy):
    def frozen(self, stages, freeze_stages):
        return lower_stages(stages, freeze_stages)


@dataclass(frozen=True)
class LinearProbeThenFineTune(Strategy):
    phases: tuple = (HeadPhase(lr=PROBE_LR, epochs=PROBE_EPOCHS), FineTunePhase())

    def frozen(self, stages, freeze_stages):
        return [] if freeze_stages is None else lower_stages(stages, freeze_stages)


@dataclass(frozen=True)
class Gradual(Strategy):
    default_layer_decay: float | None = 0.7

    def frozen(self, stages, freeze_stages):
        return body(stages)

    def unfreeze_schedule(self, frozen, freeze_stages, freeze_epochs, unfreeze_every):
        floor = 1 + (freeze_stages if freeze_stages is not None else -1)  # stages below stay frozen
        candidates = [s for s in reversed(frozen) if frozen.index(s) >= floor]
        return {s: freeze_epochs + 1 + i * unfreeze_every for i, s in enumerate(candidates)}


STRATEGIES: dict[str, Strategy] = {}
# pretrained stages train at this share of the head's LR (TrainOptions' default too). 0.3, not 0.1
# (bench_levers.py, 3 seeds each, same cost): synthetic yoga 0.989 against 0.982 (one test image more on every
# seed); Fashion-MNIST-1k (lite0 partial, 112 px) a tie, 0.855 ± 0.010 against 0.856 ± 0.006
BASE_LR_RATIO = 0.3


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to every command that takes ``--strategy`` (train, lr-find, compare)."""
    STRATEGIES[strategy.name] = strategy
    return strategy


for _s in (
    Linear("linear", "freeze the whole base, train only the head (on cached features)", 3e-3, 30),
    Partial("partial", "freeze the stem and the first K stages, train the rest and the head", 1e-3, 10),
    Strategy("full", "train every layer (pretrained layers at a lower LR)", 1e-3, 10),
    LinearProbeThenFineTune("lp-ft", "linear probe on cached features first, then fine-tune from that head at a "
                            "lower LR (Kumar et al. 2022)", 3e-4, 10),
    Gradual("gradual", "head first with the base frozen, then unfreeze stages one by one from the top, each at a "
            "lower LR (ULMFiT / fastai fine_tune)", 1e-3, 10),
):
    register(_s)


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def probe_strategy() -> Strategy:
    """The registered strategy that trains only the head (``linear``): compare's stage-1 probe cells are
    saved as runs of it, and stage 2 trains only the strategies that train the base."""
    for strategy in STRATEGIES.values():
        if not strategy.trains_base:
            return strategy
    raise UsageError("no registered strategy trains only the head; register one with phases=(HeadPhase(),) "
                     "for compare's probe cells")


def default_freeze_stages(stages: list[Stage]) -> int:
    """Freeze about the lower half of the stages: low-level features are universal."""
    n_stages = len([s for s in stages if s.name not in ("stem", "head")])
    return max(1, n_stages // 2)


@dataclass
class Plan:
    """What trains and at which LR: the output of a strategy for one model."""

    strategy: str
    frozen: list[str]  # stage names frozen at the start
    lrs: dict[str, float]  # stage name -> LR (every stage that trains at some point)
    bn: str = "frozen"
    unfreeze: dict[str, int] = field(default_factory=dict)  # gradual: stage -> first epoch it trains

    def frozen_at(self, epoch: int) -> list[str]:
        """Stages frozen during ``epoch`` (1-based): a pure function of the epoch, so a resumed run
        has exactly the stages frozen that the uninterrupted run had."""
        return [s for s in self.frozen if not (s in self.unfreeze and epoch >= self.unfreeze[s])]

    def table(self, stages: list[Stage]) -> list[dict]:
        return [{
            "stage": s.name, "params": s.n_params,
            "trainable": s.name not in self.frozen if s.name not in self.unfreeze else f"from epoch {self.unfreeze[s.name]}",
            "lr": self.lrs.get(s.name, 0.0),
            "bn": "eval" if s.name in self.frozen or self.bn == "frozen" else "train",
        } for s in stages]


def make_plan(strategy: str, stages: list[Stage], lr: float | None = None, freeze_stages: int | None = None,
              base_lr_ratio: float = BASE_LR_RATIO, layer_decay: float | None = None, bn: str = "frozen",
              freeze_epochs: int = 1, unfreeze_every: int = 1) -> Plan:
    """Freeze list, unfreeze schedule and per-stage LR from the strategy object. Pretrained stages get
    ``lr * base_lr_ratio`` (:data:`BASE_LR_RATIO` by default); with ``layer_decay`` D the LR also shrinks by D per stage
    from the head down to the stem.

    ``gradual``: the head trains alone for ``freeze_epochs``, then one more stage from the top every
    ``unfreeze_every`` epochs (down to stage K+1 when ``freeze_stages`` K is given), each deeper stage
    at a lower LR (layer decay 0.7 unless given).
    """
    strat = get_strategy(strategy)
    if bn not in ("frozen", "train"):
        raise UsageError(f"--bn must be 'frozen' or 'train', not '{bn}'")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise UsageError(f"--layer-decay must be in (0, 1], not {layer_decay}")
    head_lr = lr if lr is not None else strat.lr
    layer_decay = layer_decay or strat.default_layer_decay
    frozen = strat.frozen(stages, freeze_stages)
    unfreeze = strat.unfreeze_schedule(frozen, freeze_stages, freeze_epochs, unfreeze_every)
    lrs = {}
    trainable = [s.name for s in stages if s.name not in frozen or s.name in unfreeze]
    for depth, name in enumerate(reversed(trainable)):
        if name == "head":
            lrs[name] = head_lr
        elif layer_decay:
            lrs[name] = head_lr * base_lr_ratio * layer_decay ** (depth - 1)
        else:
            lrs[name] = head_lr * base_lr_ratio
    return Plan(strategy=strategy, frozen=frozen, lrs=lrs, bn=bn, unfreeze=unfreeze)


def apply_freeze(model: torch.nn.Module, stages: list[Stage], frozen: list[str]) -> None:
    """requires_grad=False for every parameter of a frozen stage, True for the others."""
    frozen_names = {n for s in stages if s.name in frozen for n in s.param_names}
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen_names)


def param_groups(model: torch.nn.Module, stages: list[Stage], plan: Plan, weight_decay: float = 0.05) -> list[dict]:
    """AdamW parameter groups, one per trainable stage, no weight decay on biases and norms."""
    params = dict(model.named_parameters())
    groups = []
    for stage in stages:
        if stage.name not in plan.lrs:
            continue
        decay = [params[n] for n in stage.param_names if params[n].ndim > 1]
        no_decay = [params[n] for n in stage.param_names if params[n].ndim <= 1]
        for plist, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if plist:
                groups.append({"params": plist, "lr": plan.lrs[stage.name], "weight_decay": wd,
                               "stage": stage.name})
    return groups


def set_train_mode(model: torch.nn.Module, stages: list[Stage], frozen: list[str], bn: str) -> None:
    """model.train(), then frozen stages in eval mode (BN statistics and dropout stay put), and every
    BatchNorm in eval mode when the BN policy is 'frozen'."""
    model.train()
    owner = module_stage_map(model, stages)
    for name, module in model.named_modules():
        stage = owner.get(name)
        is_bn = isinstance(module, BN_TYPES)
        if (stage in frozen) or (is_bn and bn == "frozen"):
            module.eval()
