"""RunDir: the on-disk format of a trained model, and the loaded classifier that predicts with it.

A run folder is self-contained: ``model.safetensors`` (timm key names), ``model.json`` (backbone,
classes in index order, preprocessing, strategy, metrics), ``config.yaml``, ``metrics.csv``,
``skipped.csv``, ``report.md`` + plots. ``posetune.load(RUN)`` needs nothing else.

>>> clf = load("runs/yoga")                          # doctest: +SKIP
>>> clf.predict(["photo.jpg"], top_k=3)[0].label     # doctest: +SKIP
'tree'
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from posetune.errors import UsageError

FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file, fsync and rename: a kill at any moment leaves the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_csv(path: str | Path, rows: Sequence[dict] | Sequence[Sequence], header: Sequence[str] | None = None) -> None:
    buf = io.StringIO()
    if rows and isinstance(rows[0], dict):
        header = header or list(rows[0].keys())
        writer = csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        writer = csv.writer(buf)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class RunDir:
    """Paths and readers/writers of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    def exists(self) -> bool:
        return self.model_file.is_file() and (self.path / "model.json").is_file()

    def require(self) -> RunDir:
        if not self.path.exists():
            raise UsageError(f"run folder not found: {self.path} (train one with `posetune train DATA --out RUN`)")
        if not self.exists():
            raise UsageError(f"{self.path} is not a posetune run folder (it lacks model.safetensors or model.json)")
        return self

    def write_json(self, name: str, obj) -> None:
        atomic_write_text(self.path / name, json.dumps(obj, indent=2, default=str) + "\n")

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def save_model(self, model, meta: dict) -> None:
        from safetensors.torch import save as save_bytes

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(self.model_file, save_bytes(state, metadata={"format": "posetune", "arch": meta["arch"]}))
        self.write_json("model.json", {"format_version": FORMAT_VERSION, **meta})

    def meta(self) -> dict:
        return self.read_json("model.json")


@dataclass
class Prediction:
    path: str
    label: str
    probability: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"path": self.path, "prediction": self.label, "probability": self.probability,
                "top_k": [{"label": c, "probability": p} for c, p in self.top_k], "error": self.error}


class Classifier:
    """A trained run loaded for inference (torch engine).

    ``optimize``: fold each BatchNorm into the conv before it and make 'SAME' padding static (fusion.py;
    same outputs, ~1.25-1.4x faster on a CPU), so ``.model`` expects inputs of the run's size only. Export
    turns it off so that its parity check compares against the weights exactly as trained.
    """

    engine = "torch"

    def __init__(self, run: RunDir, device: str = "auto", optimize: bool = True):
        import torch
        from safetensors.torch import load_file

        from posetune.backbones import build_model
        from posetune.data.pipeline import Preprocess
        from posetune.engine import Normalizer, place, resolve_device

        self.run = run.require()
        self.meta = run.meta()
        self.classes: list[str] = self.meta["classes"]
        self.preprocess = Preprocess.from_config(self.meta["preprocessing"])
        self.device = resolve_device(device)
        model = build_model(self.meta["arch"], len(self.classes))
        try:
            state = load_file(str(run.model_file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type on damaged files
            raise UsageError(f"{run.model_file} is damaged ({exc}); train again or restore the file") from exc
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UsageError(f"{run.model_file} does not match {self.meta['arch']}: {exc}") from exc
        self.model = place(model, self.device).eval()
        self.inference_changes: dict[str, int] = {}
        if optimize:
            from posetune.fusion import optimize_for_inference

            size = self.preprocess.size
            self.model, self.inference_changes = optimize_for_inference(self.model, (3, size, size))
        self._normalize = Normalizer(self.preprocess, self.device)
        self._torch = torch

    def logits(self, batch_uint8) -> torch.Tensor:  # noqa: F821
        from posetune.engine import autocast

        with self._torch.inference_mode(), autocast(self.device):
            return self.model(self._normalize(batch_uint8)).float().cpu()

    def predict(self, images: Iterable, top_k: int = 3, batch_size: int = 32,
                on_step: Callable[[int], None] | None = None, tta: bool = False) -> list[Prediction]:
        """Predict paths, PIL images or uint8 arrays. Unreadable files get a Prediction with ``error`` set.
        ``tta=True`` averages flipped and multi-crop views (10 per image)."""
        from posetune.predict import predict_batches

        return predict_batches(self, images, top_k=top_k, batch_size=batch_size, on_step=on_step, tta=tta)


ENGINES = ("auto", "torch", "onnx")


def _nvidia_gpu_visible() -> bool:
    # Without importing torch (that alone takes a second): the driver lists its GPUs here on Linux.
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def choose_engine(run: str | Path, engine: str = "auto", device: str = "auto", tta: bool = False) -> tuple[str, str]:
    """Resolve ``engine='auto'``: (engine, why).

    'onnx' when RUN/model.onnx was exported from these very weights and passed its parity check,
    onnxruntime is installed, no GPU is asked for or visible, and no TTA is wanted: ONNX Runtime starts
    in ~0.3 s where torch + timm take ~3 s to import, and runs a CPU forward pass faster. Else 'torch'.
    """
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not '{engine}'")
    if engine != "auto":
        return engine, "as asked"
    import importlib.util

    from posetune.onnx_engine import ONNX_FILE, file_sha256

    path = Path(run)
    onnx, sidecar, weights = path / ONNX_FILE, path / f"{ONNX_FILE}.json", path / "model.safetensors"
    if not (path.is_dir() and onnx.is_file() and sidecar.is_file() and weights.is_file()):
        return "torch", f"no {ONNX_FILE} in {run}; `posetune export {run}` makes CPU prediction start ~10x sooner"
    if tta:
        return "torch", "--tta needs the torch engine"
    if device not in ("auto", "cpu") or (device == "auto" and _nvidia_gpu_visible()):
        return "torch", "a GPU is available to torch"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "onnxruntime is not installed; pip install 'posetune[onnx]' for the faster engine"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return "torch", f"{sidecar} is unreadable"
    if not meta.get("ok") or meta.get("source_sha256") != file_sha256(weights):
        return "torch", f"{ONNX_FILE} is stale or failed its parity check; re-run `posetune export {run}`"
    return "onnx", f"{onnx} matches the weights; --engine torch to use PyTorch"


def load(run: str | Path, device: str = "auto", engine: str = "torch"):
    """Load a run folder for prediction: ``posetune.load(RUN).predict(images)``.

    ``engine="onnx"`` runs RUN/model.onnx (from `posetune export`) in ONNX Runtime without importing torch;
    ``"auto"`` picks it when it matches the weights (see :func:`choose_engine`). Both engines return an
    object with ``.classes`` and ``.predict(images, top_k, batch_size)``.
    """
    engine, _ = choose_engine(run, engine, device)
    if engine == "onnx":
        from posetune.onnx_engine import OnnxClassifier

        return OnnxClassifier(run, device=device)
    return Classifier(RunDir(run), device=device)
