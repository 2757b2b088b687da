"""Export a run to ONNX or TorchScript, and check the export against the PyTorch model.

The model file carries what a deployment needs: class names in index order, the
preprocessing and the temperature the logits are divided by before the softmax (ONNX: ``metadata_props["posetune"]``; TorchScript: the ``posetune.json`` extra
file), and the same JSON sits beside it in ``<file>.json`` together with the parity results.

The input is fixed at the run's image size: timm's ``tf_`` EfficientNets pad 'same' from the
input's height and width at run time, and a fixed size turns that into constants. The batch
axis is fixed at 1 unless ``dynamic_batch``.

>>> result = export("runs/yoga", format="onnx")     # doctest: +SKIP
>>> result["parity"]["images"]["top1_agreement"]    # doctest: +SKIP
1.0
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from posetune.checks import Bool, Choice, Int, InvalidOption, Options, OutputPath, Paths, Text, option
from posetune.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from posetune.run import RunMeta

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
EXPORT_FORMATS = (*FORMATS, "timm")  # timm: a folder for timm's loader, written by posetune.hub (the CLI/API send it there)
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportOptions(Options):
    """Every option of `posetune export` (same names as the flags; the last three are Python API only)."""

    run: str = option("", Text("a run folder written by `posetune train`"), flag="RUN")
    format: str = option("onnx", Choice(*EXPORT_FORMATS))
    opset: int | None = option(None, Int(9, 23))  # default DEFAULT_OPSET
    dynamic_batch: bool = option(False, Bool())
    out: str | None = option(None, OutputPath(folder=False))
    images: list[str] | None = option(None, Paths())  # default: the run's data, else rendered poses
    n_random: int = option(8, Int(1, 1024), flag="n_random")
    n_images: int = option(16, Int(1, 10_000), flag="n_images")
    strict: bool = option(True, Bool(), flag="strict")  # raise CheckFailed on a parity problem

    def check_together(self, label) -> None:
        if self.opset is not None and self.format != "onnx":
            raise InvalidOption(f"--opset applies to --format onnx only, not --format {self.format}; drop --opset")


def export(run: str | Path, reporter=None, **options) -> dict:
    """Write RUN's model as ONNX (``RUN/model.onnx``) or TorchScript (``RUN/model.torchscript.pt``).

    Options as :class:`ExportOptions`. Parity is checked on ``n_random`` random tensors and on up to
    ``n_images`` real images (``images``, else the run's own data, else rendered synthetic poses). With
    ``strict``, a top-1 disagreement or a logit gap above tolerance raises :class:`CheckFailed` after the
    files are written; the result's ``problems`` lists them either way.
    """
    import torch

    from posetune.io import file_sha256, write_json
    from posetune.predict import collect_paths
    from posetune.predict.onnx_engine import METADATA_KEY
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir
    from posetune.version import __version__

    opts = ExportOptions.build("posetune.export", run=run, **options)
    run, format, opset, dynamic_batch, out, images = (opts.run, opts.format, opts.opset, opts.dynamic_batch, opts.out,
                                                      opts.images)
    if images:
        collect_paths(images)  # a missing --images file fails now, not after the model file is written
    if format not in FORMATS:  # timm: a folder for timm's loader, a job of posetune.hub (the CLI/API send it there)
        raise UsageError("--format timm is written by posetune.export(run, format='timm') / posetune.hub.export_timm")
    if reporter is not None:
        reporter.info(f"exporting {run} to {format}...")
    rundir = RunDir(run).require()
    clf = Classifier(rundir, device="cpu", optimize=False)  # the reference is the model exactly as trained
    out = Path(out) if out else rundir / FORMATS[format]
    size = clf.preprocess.size
    batch = 2 if dynamic_batch else 1  # a sample batch of 1 would let the exporter specialise the axis
    sample = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    meta = {
        "format_version": 1, "posetune_version": __version__, "format": format,
        "backbone": clf.meta.backbone, "arch": clf.meta.arch, "strategy": clf.meta.strategy,
        "classes": clf.classes, "preprocessing": clf.preprocess.to_config(),
        "temperature": clf.temperature,  # probabilities = softmax(logits / temperature); the engines apply it
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": ["batch" if dynamic_batch else 1, 3, size, size],
        "input": "float32 NCHW, RGB, (pixel / 255 - mean) / std after resize + center crop",
        "source_sha256": file_sha256(rundir.model_file), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t0 = time.perf_counter()
    if format == "onnx":
        meta["opset"] = opset or DEFAULT_OPSET
        meta["exporter"] = _write_onnx(clf.model, sample, out, meta["opset"], dynamic_batch,
                                       {METADATA_KEY: json.dumps(meta)})
        from posetune.predict.onnx_engine import OnnxClassifier

        deployed = OnnxClassifier(out)
        run_exported = lambda x: deployed.session.run(None, {INPUT_NAME: x})[0]  # noqa: E731
    else:
        deployed = None
        meta["exporter"] = "torch.jit.trace"
        _write_torchscript(clf.model, sample, out, json.dumps(meta))
        run_exported = _torchscript_runner(out)
    seconds = time.perf_counter() - t0

    with torch.inference_mode():
        def reference(x: np.ndarray) -> np.ndarray:
            return clf.model(torch.from_numpy(x)).float().numpy()

        gen = np.random.default_rng(0)
        random_inputs = gen.standard_normal((opts.n_random, 3, size, size)).astype(np.float32)
        parity = {"random": parity_check(reference(random_inputs), _in_batches(run_exported, random_inputs, dynamic_batch))}
        with parity_images(clf.meta, images, opts.n_images) as paths:
            parity["images"] = _image_parity(clf, deployed, run_exported, paths, dynamic_batch)

    problems = [f"{kind}: {p}" for kind, check in parity.items() for p in check.pop("problems")]
    result = {"format": format, "path": str(out), "sidecar": f"{out}.json", "bytes": out.stat().st_size,
              "exporter": meta["exporter"], "opset": meta.get("opset"), "dynamic_batch": dynamic_batch,
              "input_shape": meta["input_shape"], "export_seconds": round(seconds, 2), "parity": parity,
              "ok": not problems, "problems": problems}
    # Written last and bound to the bytes it checked: a model file replaced or half-written later no longer
    # matches, so --engine auto never takes an unchecked model.
    write_json(f"{out}.json", {**meta, "parity": parity, "ok": not problems, "model_sha256": file_sha256(out)})
    if opts.strict and problems:
        raise CheckFailed(f"{out} disagrees with the PyTorch model: {'; '.join(problems)}")
    return result


def parity_check(reference: np.ndarray, exported: np.ndarray, names: Sequence[str] | None = None) -> dict:
    """max |delta logits| and top-1 agreement; any top-1 flip or a gap above tolerance is a problem."""
    delta = float(np.abs(reference - exported).max()) if reference.size else 0.0
    # float32 kernels differ in summation order: ~1e-5 on logits of size ~10 is normal.
    tolerance = 1e-3 * max(1.0, float(np.abs(reference).max()) if reference.size else 1.0)
    flips = np.flatnonzero(reference.argmax(1) != exported.argmax(1))
    problems = []
    if len(flips):
        which = [names[i] for i in flips] if names else [f"#{i}" for i in flips]
        problems.append(f"top-1 differs on {len(flips)} of {len(reference)} ({', '.join(which[:5])})")
    if delta > tolerance:
        problems.append(f"max |delta logits| {delta:.2e} > tolerance {tolerance:.1e}")
    return {"n": int(len(reference)), "max_abs_delta": delta, "tolerance": tolerance,
            "top1_agreement": 1.0 - len(flips) / max(1, len(reference)), "problems": problems}


def _in_batches(fn, x: np.ndarray, dynamic_batch: bool) -> np.ndarray:
    if dynamic_batch:
        return fn(x)
    return np.concatenate([fn(x[i:i + 1]) for i in range(len(x))]) if len(x) else np.zeros((0, 0), np.float32)


def _write_onnx(model, sample, out: Path, opset: int, dynamic_batch: bool, props: dict[str, str]) -> str:
    """Export with torch's dynamo exporter (needs onnxscript), else the TorchScript-based one; add metadata."""
    import torch

    try:
        import onnx
    except ImportError as exc:
        raise UsageError("--format onnx needs the onnx package: pip install 'posetune[export]'") from exc
    try:
        import onnxscript  # noqa: F401 - required by torch's dynamo exporter
        exporter = "torch.onnx.export(dynamo=True)"
    except ImportError:
        exporter = "torch.onnx.export(dynamo=False)"
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
        # The exporters print progress on stdout, which belongs to --json output: keep it for errors only.
        log = io.StringIO()
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if "dynamo=True" in exporter:
                    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                    torch.onnx.export(model, (sample,), str(tmp_file), dynamo=True, dynamic_shapes=shapes,
                                      external_data=False, verbose=False, **common)
                else:
                    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
                    torch.onnx.export(model, (sample,), str(tmp_file), dynamo=False, dynamic_axes=axes, **common)
            except Exception:
                sys.stderr.write(log.getvalue())
                raise
        proto = onnx.load(str(tmp_file))
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    from posetune.io import atomic_write_bytes

    atomic_write_bytes(out, proto.SerializeToString())
    return exporter


def _write_torchscript(model, sample, out: Path, meta_json: str) -> None:
    import torch

    from posetune.io import atomic_write_bytes

    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings name the shape-derived Python ints ('same' padding) that the fixed size makes constant.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, sample)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"posetune.json": meta_json})
    atomic_write_bytes(out, buf.getvalue())


def _torchscript_runner(path: Path):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still loadable
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return run


def _image_parity(clf, deployed, run_exported, paths: list[str], dynamic_batch: bool) -> dict:
    """Torch engine (torch preprocessing + eager model) vs the deployed path on the same files.

    For ONNX the deployed path is the torch-free engine (numpy preprocessing + ONNX Runtime), so this
    also checks that its preprocessing matches; ``input_max_abs_delta`` shows any gap there.
    """
    import torch

    from posetune.data.images import ImageError

    tensors, names = [], []
    for p in paths:
        try:
            tensors.append(clf.preprocess.eval_crop(clf.preprocess.decode(p)))
            names.append(p)
        except ImageError:
            continue
    if not tensors:
        return parity_check(np.zeros((0, len(clf.classes)), np.float32), np.zeros((0, len(clf.classes)), np.float32))
    batch = clf.normalize(torch.stack(tensors))
    torch_inputs = batch.contiguous().numpy()
    reference = clf.logits(batch).numpy()
    if deployed is not None:
        inputs = deployed.preprocess(names)
        result = parity_check(reference, deployed.logits(inputs), names)
        result["input_max_abs_delta"] = float(np.abs(inputs - torch_inputs).max())
        return result
    return parity_check(reference, _in_batches(run_exported, torch_inputs, dynamic_batch), names)


@contextlib.contextmanager
def parity_images(meta: RunMeta, images: Sequence[str | Path] | None, n: int):
    """Up to ``n`` image paths spread over the given ones, the run's data, or rendered synthetic poses."""
    from posetune.predict import collect_paths

    paths: list[str] = []
    if images:
        paths = collect_paths(list(images))  # the user's: none found is an error
    elif meta.data and Path(meta.data).is_dir():
        paths = collect_paths([meta.data], allow_empty=True)
    if paths:
        step = max(1, len(paths) // n)
        yield paths[::step][:n]
        return
    from posetune.data.synth import KAGGLE_POSES, POSES, render_pose

    size = max(96, int(meta.preprocessing["input_size"][-1] * 1.5))  # larger than the crop: the resize runs
    poses = [c for c in meta.classes if c in POSES] or list(KAGGLE_POSES)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(n):
            render_pose(poses[i % len(poses)], rng, size).save(f"{tmp}/synth_{i:02d}.jpg", quality=90)
        yield sorted(str(p) for p in Path(tmp).glob("*.jpg"))
