"""The torch engine: a run's model.safetensors in PyTorch, and the batched inference loop over a loader.

>>> clf = Classifier(RunDir("runs/yoga"))            # doctest: +SKIP
>>> clf.predict(["photo.jpg"], top_k=3)[0].label     # doctest: +SKIP
'tree'
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import numpy as np
import torch

from posetune.data.pipeline import Preprocess
from posetune.devices import Normalizer, autocast, place, resolve_device
from posetune.errors import UsageError
from posetune.predict.prediction import Prediction, batched_predictions, decoded
from posetune.run import RunDir


class Classifier:
    """A trained run loaded for inference (torch engine).

    ``optimize``: fold each BatchNorm into the conv before it and make 'SAME' padding static (inference.py;
    same outputs, ~1.25-1.4x faster on a CPU), so ``.model`` expects inputs of the run's size only. Export
    turns it off so that its parity check compares against the weights exactly as trained.
    """

    engine = "torch"

    def __init__(self, run: RunDir, device: str = "auto", optimize: bool = True):
        from posetune.backbones import BackboneSpec, build_spec_model

        self.run = run.require()
        self.meta = run.meta()
        self.classes: list[str] = self.meta.classes
        self.preprocess = Preprocess.from_config(self.meta.preprocessing)
        self.temperature = float(self.meta.temperature)  # fitted on val after training; 1.0 in older runs
        self.device = resolve_device(device)
        try:
            spec = BackboneSpec(self.meta.backbone, self.meta.arch, source=None, kind=self.meta.kind)
            model = build_spec_model(spec, len(self.classes), self.meta.pose_dim)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise UsageError(f"{run / 'model.json'} names the architecture '{self.meta.arch}', which timm does not "
                             f"know ({exc}); restore model.json or train again") from exc
        try:
            model.load_state_dict(run.load_state(self.meta.arch))
        except RuntimeError as exc:  # shapes or keys that do not match model.json's arch and classes
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])[:300]
            raise UsageError(f"{run.model_file} does not fit {run / 'model.json'} ({self.meta.arch}, "
                             f"{len(self.classes)} classes): {detail}; restore both from the same run") from exc
        self.model = place(model, self.device).eval()
        self.inference_changes: dict[str, int] = {}
        if optimize:  # the same copy the training's validation and final scoring run
            from posetune.inference import inference_copy

            self.model, self.inference_changes = inference_copy(self.model, self.meta.kind, self.preprocess.size)
        self.normalize = Normalizer(self.preprocess, self.device)  # uint8 NCHW -> normalised float on the device

    @property
    def kind(self) -> str:
        """image | pose | fusion (model.json's kind)."""
        return self.meta.kind

    @property
    def uses_pose(self) -> bool:
        return self.kind != "image"

    def logits(self, batch: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float N x 3 x S x S (see :attr:`normalize`) [and N x pose_dim landmark features for a pose
        or fusion run] -> N x classes logits on the CPU."""
        inputs = (batch,) if pose is None else (batch, pose.to(self.device))
        with torch.inference_mode(), autocast(self.device):
            return self.model(*inputs).float().cpu()

    def decode(self, item):
        """One path, PIL image or array -> what :meth:`probabilities` takes: a uint8 CHW tensor with the short side
        resized, not yet cropped (raises ImageError); for a pose/fusion run (that tensor, landmark features,
        landmarks or None). The per-image half of :meth:`predict`, run outside the model."""
        if not self.uses_pose:
            return self.preprocess.decode(item)
        from posetune.pose.inputs import image_pose

        features, found = image_pose(item)
        return self.preprocess.decode(item), torch.from_numpy(features), found

    def probabilities(self, decoded: list, tta: bool = False) -> np.ndarray:
        """Decoded images (:meth:`decode`) -> one forward pass: a (len, classes) array of
        ``softmax(logits / temperature)``. ``tta=True`` averages flipped and multi-crop views (10 per image)."""
        pre, temperature = self.preprocess, self.temperature
        if self.uses_pose:
            if tta:
                raise UsageError("--tta is for image runs; this run uses landmarks (drop --tta)")
            batch = self.normalize(torch.stack([pre.eval_crop(t) for t, _, _ in decoded]))
            pose = torch.stack([f for _, f, _ in decoded])
            return (self.logits(batch, pose) / temperature).softmax(1).numpy()
        if tta:
            views = self.normalize(torch.stack([v for t in decoded for v in pre.tta_views(t)]))
            probs = (self.logits(views) / temperature).softmax(1).view(len(decoded), -1, len(self.classes)).mean(1)
        else:
            batch = self.normalize(torch.stack([pre.eval_crop(t) for t in decoded]))
            probs = (self.logits(batch) / temperature).softmax(1)
        return probs.numpy()

    def predict(self, images: Iterable, top_k: int = 3, batch_size: int = 32,
                on_step: Callable[[int], None] | None = None, tta: bool = False,
                min_confidence: float | None = None) -> list[Prediction]:
        """Predict paths, PIL images or uint8 arrays. Unreadable files get a Prediction with ``error`` set.
        Probabilities are ``softmax(logits / temperature)``. ``tta=True`` averages flipped and multi-crop views
        (10 per image); below ``min_confidence`` the label is 'unsure'. Pose/fusion runs: each Prediction carries
        its landmarks; a `pose` run that finds nobody answers 'no person detected'."""
        items = list(images)
        return batched_predictions(decoded(items, self.decode), len(items),
                                   functools.partial(self.probabilities, tta=tta), self.classes, top_k, batch_size,
                                   on_step, min_confidence, kind=self.kind)


@torch.inference_mode()
def run_batches(forward: Callable[..., torch.Tensor], loader, device: torch.device,
                preprocess: Preprocess, width: int, on_step: Callable[[int], None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` over every normalised batch of ``loader``: (outputs on the CPU, labels); ``width``
    sizes the empty result of an empty loader."""
    prepare = Normalizer(preprocess, device)
    outs, labels = [], []
    for x, y in loader:
        inputs = prepare.inputs(x)  # (images,) or (images, landmark features)
        with autocast(device):
            outs.append(forward(*inputs).float().cpu())
        labels.append(torch.as_tensor(y))
        if on_step:
            on_step(len(y))
    if not outs:
        return torch.zeros(0, width), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


def predict_logits(model: torch.nn.Module, loader, device: torch.device, preprocess: Preprocess,
                   on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every batch of ``loader`` (eval mode)."""
    model.eval()
    return run_batches(model, loader, device, preprocess, 0, on_step)


