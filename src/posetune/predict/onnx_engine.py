"""Prediction through ONNX Runtime with numpy + Pillow only: the light deployment path.

Nothing here imports torch, timm or torchvision, at module level or later, so a deployment can
install ``posetune[onnx]`` (onnxruntime, pillow, numpy) and predict with a file written by
``posetune export RUN --format onnx``. The preprocessing is the same as the torch engine's
(``posetune.data.pipeline.Preprocess``; both decode through ``PreprocessConfig.pixels``): resize the short side to floor(size / crop_pct) with the
run's interpolation, center crop to size x size, scale to 0..1, subtract mean, divide by std.

A pose or fusion run's export takes landmark features too (input ``pose``; a pose run's takes nothing else):
:meth:`OnnxClassifier.decode` computes them with mediapipe (``posetune.pose.inputs.image_pose``, the torch
engine's own function), so such a deployment installs ``posetune[onnx,pose]``, still without torch.

>>> clf = OnnxClassifier("runs/yoga")                 # doctest: +SKIP  (runs/yoga/model.onnx)
>>> clf.predict(["photo.jpg"], top_k=3)[0].label      # doctest: +SKIP
'tree'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from posetune.calibration import softmax
from posetune.data.preprocessing import PreprocessConfig
from posetune.devices import check_device_name
from posetune.errors import UsageError
from posetune.io import file_sha256
from posetune.pose.features import FEATURE_DIM
from posetune.pose.landmarks import require_mediapipe
from posetune.predict.prediction import Prediction, batched_predictions, decoded
from posetune.run import temperature_problem

ONNX_FILE = "model.onnx"
METADATA_KEY = "posetune"  # metadata_props key holding the JSON written by `posetune export`
IMAGE_INPUT, POSE_INPUT = "input", "pose"  # the graph's inputs: normalised images, landmark features
KIND_INPUTS = {"image": (IMAGE_INPUT,), "pose": (POSE_INPUT,), "fusion": (IMAGE_INPUT, POSE_INPUT)}


@dataclass(frozen=True)
class ImageTransform(PreprocessConfig):
    """numpy twin of ``Preprocess``'s eval path, built from the same ``preprocessing`` dict of model.json."""

    def crop(self, arr: np.ndarray) -> np.ndarray:
        """Center crop to size x size, zero-padding a smaller image, with torchvision's rounding."""
        s = self.size
        h, w = arr.shape[:2]
        if h < s or w < s:
            ph, pw = max(0, s - h), max(0, s - w)
            arr = np.pad(arr, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
            h, w = arr.shape[:2]
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return arr[top:top + s, left:left + s]

    def normalize(self, batch_uint8: np.ndarray) -> np.ndarray:
        """NxHxWx3 uint8 -> Nx3xHxW float32, in the same operation order as the torch Normalizer."""
        x = batch_uint8.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((x - mean) / std)

    def __call__(self, items: Sequence) -> np.ndarray:
        return self.normalize(np.stack([self.crop(self.pixels(it)) for it in items]))


def resolve_onnx(run: str | Path) -> tuple[Path, Path | None]:
    """RUN folder or .onnx file -> (the .onnx file, the run folder or None)."""
    path = Path(run)
    if path.is_file() and path.suffix == ".onnx":
        return path, path.parent
    if path.is_dir():
        model = path / ONNX_FILE
        if model.is_file():
            return model, path
        raise UsageError(f"{path} has no {ONNX_FILE}: export it first with `posetune export {path} --format onnx`")
    raise UsageError(f"no such run folder or .onnx file: {path}")


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    check_device_name(device)
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UsageError("--device cuda was asked for but onnxruntime has no CUDA provider; use --device cpu "
                         "or install onnxruntime-gpu")
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """A run's ONNX export loaded in ONNX Runtime; same ``.predict`` and ``.classes`` as the torch Classifier."""

    engine = "onnx"

    def __init__(self, run: str | Path, device: str = "auto", threads: int | None = None, spinning: bool = True):
        """``spinning=False``: ONNX Runtime's threads sleep between runs instead of spin-waiting for the next one
        (a server, whose runs come apart and whose cores decode uploads meanwhile)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UsageError("the onnx engine needs onnxruntime: pip install 'posetune[onnx]'") from exc
        self.model_file, run_dir = resolve_onnx(run)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.model_file), options, providers=_providers(device))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors on bad files
            raise UsageError(f"cannot load {self.model_file} in ONNX Runtime: {exc}") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise UsageError(f"{self.model_file} has no posetune metadata; re-export it with `posetune export RUN`")
        self.meta: dict = json.loads(raw)
        self.classes: list[str] = list(self.meta["classes"])
        self.temperature = self._temperature()
        self.preprocess = ImageTransform.from_config(self.meta["preprocessing"])
        self.normalize = self.preprocess.normalize  # uint8 NHWC -> normalised float32 NCHW
        self.kind: str = self.meta.get("kind", "image")  # exports from before pose runs: image
        self.input_names = self._input_names()
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch: int | None = batch if isinstance(batch, int) else None
        self._check_fresh(run_dir)
        if self.uses_pose:
            require_mediapipe()  # the one-line posetune[pose] hint now, not on the first image

    @property
    def uses_pose(self) -> bool:
        return self.kind != "image"

    def _input_names(self) -> tuple[str, ...]:
        """The graph inputs this kind of export feeds, checked against the graph (a damaged or foreign file)."""
        if self.kind not in KIND_INPUTS:
            raise UsageError(f"{self.model_file}'s posetune metadata names kind '{self.kind}', which this posetune "
                             f"does not know ({', '.join(KIND_INPUTS)}); upgrade posetune or re-export the run")
        if self.kind == "image":  # older exports named their one input freely
            return (self.session.get_inputs()[0].name,)
        names, found = KIND_INPUTS[self.kind], {i.name for i in self.session.get_inputs()}
        if not set(names) <= found or self.meta.get("pose_dim") != FEATURE_DIM:
            raise UsageError(f"{self.model_file} takes inputs {sorted(found)} of pose_dim {self.meta.get('pose_dim')}, "
                             f"not this posetune's {list(names)} of {FEATURE_DIM} landmark features; re-export "
                             "(or retrain) the run with this posetune")
        return names

    def _temperature(self) -> float:
        """The run's temperature as exported (exports from before temperature scaling: 1.0)."""
        value = self.meta.get("temperature", 1.0)
        problem = temperature_problem(value)
        if problem:
            raise UsageError(f"{self.model_file}'s posetune metadata is damaged: {problem}; re-export it with "
                             "`posetune export RUN`")
        return float(value)

    def _check_fresh(self, run_dir: Path | None) -> None:
        """Refuse an export older than the run's weights: it would silently predict with the old model."""
        source = self.meta.get("source_sha256")
        weights = run_dir / "model.safetensors" if run_dir else None
        if source and weights is not None and weights.is_file() and file_sha256(weights) != source:
            raise UsageError(f"{self.model_file} was exported from other weights than {weights}; "
                             f"re-export with `posetune export {run_dir} --format onnx`")

    def logits(self, batch: np.ndarray | None, pose: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 Nx3xSxS [and N x pose_dim landmark features for a pose or fusion run; a pose run's
        graph ignores ``batch``, which may be None] -> N x classes logits (chunks/pads to a fixed batch size if the
        export has one)."""
        given = {IMAGE_INPUT: batch, POSE_INPUT: pose}
        feeds = {name: given[name] for name in self.input_names} if self.uses_pose else {self.input_names[0]: batch}
        if self.fixed_batch is None:
            return self.session.run(None, feeds)[0]
        n, b = len(next(iter(feeds.values()))), self.fixed_batch
        out = []
        for i in range(0, n, b):
            chunk = {name: _padded(x[i:i + b], b) for name, x in feeds.items()}
            out.append(self.session.run(None, chunk)[0])
        return np.concatenate(out)[:n]

    def decode(self, item):
        """One path, PIL image or array -> what :meth:`probabilities` takes: SxSx3 uint8, resized and center-cropped
        (raises ImageError); for a pose/fusion run (those pixels, float32 landmark features, landmarks or None), as
        the torch engine's decode. The per-image half of :meth:`predict`, run outside the model."""
        if not self.uses_pose:
            return self.preprocess.crop(self.preprocess.pixels(item))
        from posetune.pose.inputs import image_pose

        features, found = image_pose(item)  # on the full image, as in training
        return self.preprocess.crop(self.preprocess.pixels(item)), features, found

    def probabilities(self, decoded: list) -> np.ndarray:
        """Decoded images (:meth:`decode`) -> one forward pass (chunked to a fixed export batch, see :meth:`logits`):
        a (len, classes) array of ``softmax(logits / temperature)``."""
        if not self.uses_pose:
            return softmax(self.logits(self.normalize(np.stack(decoded))), self.temperature)
        pose = np.stack([features for _, features, _ in decoded]).astype(np.float32, copy=False)
        images = None if self.kind == "pose" else self.normalize(np.stack([pixels for pixels, _, _ in decoded]))
        return softmax(self.logits(images, pose), self.temperature)

    def predict(self, images: Iterable, top_k: int = 3, batch_size: int = 32,
                on_step: Callable[[int], None] | None = None, min_confidence: float | None = None) -> list[Prediction]:
        """Predict paths, PIL images or uint8 arrays. Unreadable files get a Prediction with ``error`` set.
        Probabilities are ``softmax(logits / temperature)``; below ``min_confidence`` the label is 'unsure'."""
        items = list(images)
        return batched_predictions(decoded(items, self.decode), len(items), self.probabilities, self.classes, top_k,
                                   batch_size, on_step, min_confidence, kind=self.kind)


def _padded(chunk: np.ndarray, batch: int) -> np.ndarray:
    """``chunk`` zero-padded along the batch axis to ``batch`` rows (a fixed-batch export's last chunk)."""
    if len(chunk) == batch:
        return chunk
    return np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
