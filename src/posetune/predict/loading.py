"""``load(RUN)``: a run folder -> a classifier of the engine that fits (torch, or ONNX Runtime).

Torch-free at import: choosing the ONNX engine never imports torch.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from posetune.checks import BATCH_SIZE, Bool, Choice, Int, InvalidOption, Options, OutputPath, Paths, Text, option
from posetune.devices import DEVICE, check_device_name, nvidia_gpu_visible
from posetune.io import file_sha256
from posetune.predict.onnx_engine import ONNX_FILE
from posetune.predict.prediction import MIN_CONFIDENCE

ENGINES = ("auto", "torch", "onnx")
RUN = Text("a run folder written by `posetune train`")


@dataclass
class PredictOptions(Options):
    """Every option of `posetune predict` (``posetune.predict_paths`` takes the same names)."""

    run: str = option("", RUN, flag="RUN")
    paths: list[str] = option(check=Paths(), factory=list, flag="PATHS")
    top_k: int = option(3, Int(1, 1000))
    batch_size: int = option(32, Int(*BATCH_SIZE))
    device: str = option("auto", DEVICE)
    engine: str = option("auto", Choice(*ENGINES))
    tta: bool = option(False, Bool())
    csv: str | None = option(None, OutputPath(folder=False))  # path,prediction,probability,top1,p1,...
    min_confidence: float | None = option(None, MIN_CONFIDENCE)  # below it the label is 'unsure'
    overlay: str | None = option(None, OutputPath(folder=True))  # DIR/<stem>.png: skeleton + answer per image

    def check_together(self, label) -> None:
        if self.tta and self.engine == "onnx":
            raise InvalidOption("--tta needs the torch engine: pass --engine torch (or auto), not --engine onnx")


def choose_engine(run: str | Path, engine: str = "auto", device: str = "auto", tta: bool = False) -> tuple[str, str]:
    """Resolve ``engine='auto'``: (engine, why).

    'onnx' when RUN/model.onnx was exported from these very weights and passed its parity check,
    onnxruntime is installed, no GPU is asked for or visible, and no TTA is wanted: ONNX Runtime starts
    in ~0.3 s where torch + timm take ~3 s to import, and runs a CPU forward pass faster. Else 'torch'.
    """
    Choice(*ENGINES)(engine, "--engine")
    check_device_name(device)
    if engine != "auto":
        return engine, "as asked"
    path = Path(run)
    onnx, sidecar, weights = path / ONNX_FILE, path / f"{ONNX_FILE}.json", path / "model.safetensors"
    if not (path.is_dir() and onnx.is_file() and sidecar.is_file() and weights.is_file()):
        return "torch", f"no {ONNX_FILE} in {run}; `posetune export {run}` makes CPU prediction start ~10x sooner"
    if tta:
        return "torch", "--tta needs the torch engine"
    if device not in ("auto", "cpu") or (device == "auto" and nvidia_gpu_visible()):
        return "torch", "a GPU is available to torch"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "onnxruntime is not installed; pip install 'posetune[onnx]' for the faster engine"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return "torch", f"{sidecar} is unreadable"
    if not meta.get("ok") or meta.get("source_sha256") != file_sha256(weights):
        return "torch", f"{ONNX_FILE} is stale or failed its parity check; re-run `posetune export {run}`"
    if meta.get("model_sha256") != file_sha256(onnx):  # replaced or half-written after its check
        return "torch", f"{ONNX_FILE} is not the file its parity check passed on; re-run `posetune export {run}`"
    if meta.get("temperature", 1.0) != _run_temperature(path):
        return "torch", f"{ONNX_FILE} carries another temperature than model.json; re-run `posetune export {run}`"
    return "onnx", f"{onnx} matches the weights; --engine torch to use PyTorch"


def _run_temperature(run: Path):
    try:
        return json.loads((run / "model.json").read_text()).get("temperature", 1.0)
    except (OSError, ValueError, AttributeError):
        return None  # loading the run folder names what is wrong with it


def load(run: str | Path, device: str = "auto", engine: str = "torch", spinning: bool = True):
    """Load a run folder for prediction: ``posetune.load(RUN).predict(images)``.

    ``engine="onnx"`` runs RUN/model.onnx (from `posetune export`) in ONNX Runtime without importing torch;
    ``"auto"`` picks it when it matches the weights (see :func:`choose_engine`). Both engines return an
    object with ``.classes``, ``.temperature``, ``.normalize(uint8 batch)``, ``.logits(normalised batch[, landmark
    features])`` (before the temperature; a pose/fusion run takes the features too), ``.predict(images, top_k,
    batch_size, min_confidence=None)`` and its two halves: ``.decode(image)`` (per image; a pose/fusion run: the
    pixels, landmark features and landmarks or None) and ``.probabilities(decoded images)`` (one forward pass, the
    temperature applied; the server batches requests through it). ``spinning=False`` (ONNX engine) keeps ONNX Runtime's
    threads from spin-waiting between runs.
    """
    engine, _ = choose_engine(run, engine, device)
    if engine == "onnx":
        from posetune.predict.onnx_engine import OnnxClassifier

        return OnnxClassifier(run, device=device, spinning=spinning)
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    return Classifier(RunDir(run), device=device)


def predict_paths(run: str | Path, paths, on_step=None, **options) -> list:
    """Predict files or folders with a run folder (as `posetune predict`; with ``csv`` the CSV is written too,
    with ``overlay=DIR`` each image with its skeleton and answer as DIR/<stem>.png, ``Prediction.overlay``).
    Options as :class:`PredictOptions`, except that the engine defaults to torch here (auto is the CLI's)."""
    from posetune.predict.overlays import overlay_targets, write_overlays
    from posetune.predict.prediction import collect_paths, write_predictions_csv

    opts = PredictOptions.build("posetune.predict_paths", run=run, paths=paths, **{"engine": "torch", **options})
    files = collect_paths(opts.paths)
    targets = overlay_targets(files, opts.overlay) if opts.overlay else None  # refused before any work
    engine, _ = choose_engine(opts.run, opts.engine, opts.device, opts.tta)
    clf = load(opts.run, device=opts.device, engine=engine)
    preds = clf.predict(files, top_k=opts.top_k, batch_size=opts.batch_size, on_step=on_step,
                        min_confidence=opts.min_confidence, **({"tta": True} if opts.tta else {}))
    if opts.csv:
        write_predictions_csv(preds, opts.csv)
    if targets is not None:
        write_overlays(preds, targets)
    return preds
