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
OUTPUT_NAME = "logits"  # the inputs' names: predict.onnx_engine.KIND_INPUTS


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
    files are written; the result's ``problems`` lists them either way. A pose or fusion run's model takes
    landmark features too (a pose run's nothing else), always with a dynamic batch axis; its image check adds a
    blank image, where nobody is found.
    """
    import torch

    from posetune.io import file_sha256, write_json
    from posetune.predict import collect_paths
    from posetune.predict.onnx_engine import METADATA_KEY
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    opts = ExportOptions.build("posetune.export", run=run, **options)
    run, format, opset, out, images = opts.run, opts.format, opts.opset, opts.out, opts.images
    if images:
        collect_paths(images)  # a missing --images file fails now, not after the model file is written
    if format not in FORMATS:  # timm: a folder for timm's loader, a job of posetune.hub (the CLI/API send it there)
        raise UsageError("--format timm is written by posetune.export(run, format='timm') / posetune.hub.export_timm")
    if reporter is not None:
        reporter.info(f"exporting {run} to {format}...")
    rundir = RunDir(run).require()
    clf = Classifier(rundir, device="cpu", optimize=False)  # the reference is the model exactly as trained
    out = Path(out) if out else rundir / FORMATS[format]
    # A pose/fusion graph has no shape-derived constants on the batch axis, and a server batches landmark rows.
    dynamic_batch = opts.dynamic_batch or clf.uses_pose
    module, names = _graph(clf)
    sample = tuple(map(torch.from_numpy, _random_inputs(clf, 2 if dynamic_batch else 1, names)))  # 1: specialised
    meta = _metadata(clf, format, names, dynamic_batch, file_sha256(rundir.model_file))
    t0 = time.perf_counter()
    if format == "onnx":
        meta["opset"] = opset or DEFAULT_OPSET
        meta["exporter"] = _write_onnx(module, sample, out, meta["opset"], dynamic_batch, names,
                                       {METADATA_KEY: json.dumps(meta)})
        from posetune.predict.onnx_engine import OnnxClassifier

        deployed = OnnxClassifier(out)
        run_exported = lambda *x: deployed.session.run(None, dict(zip(names, x)))[0]  # noqa: E731
    else:
        deployed = None
        meta["exporter"] = "torch.jit.trace"
        _write_torchscript(module, sample, out, json.dumps(meta))
        run_exported = _torchscript_runner(out)
    seconds = time.perf_counter() - t0

    random_inputs = _random_inputs(clf, opts.n_random, names, seed=0)
    parity = {"random": parity_check(_reference(clf, names, random_inputs),
                                     _in_batches(run_exported, random_inputs, dynamic_batch))}
    with parity_images(clf.meta, images, opts.n_images) as paths:
        parity["images"] = _image_parity(clf, deployed, run_exported, paths, names, dynamic_batch)

    problems = [f"{kind}: {p}" for kind, check in parity.items() for p in check.pop("problems")]
    result = {"format": format, "kind": clf.meta.kind, "path": str(out), "sidecar": f"{out}.json",
              "bytes": out.stat().st_size, "exporter": meta["exporter"], "opset": meta.get("opset"),
              "dynamic_batch": dynamic_batch, "input_shape": meta["input_shape"], "inputs": meta["inputs"],
              "export_seconds": round(seconds, 2), "parity": parity, "ok": not problems, "problems": problems}
    # Written last and bound to the bytes it checked: a model file replaced or half-written later no longer
    # matches, so --engine auto never takes an unchecked model.
    write_json(f"{out}.json", {**meta, "parity": parity, "ok": not problems, "model_sha256": file_sha256(out)})
    if opts.strict and problems:
        raise CheckFailed(f"{out} disagrees with the PyTorch model: {'; '.join(problems)}")
    return result


def _graph(clf):
    """(the module to export, its input names): a pose run's graph takes the landmark features alone."""
    import torch

    from posetune.predict.onnx_engine import KIND_INPUTS

    kind = clf.meta.kind
    if kind == "pose":  # PoseClassifier.forward without its unused images; parity compares with the model itself
        return torch.nn.Sequential(clf.model.embed, clf.model.classifier).eval(), KIND_INPUTS[kind]
    return clf.model, KIND_INPUTS[kind]


def _metadata(clf, format: str, names: Sequence[str], dynamic_batch: bool, source_sha256: str) -> dict:
    """What the model file carries (and its sidecar repeats): classes, preprocessing, temperature, the inputs."""
    from posetune.predict.onnx_engine import IMAGE_INPUT, POSE_INPUT
    from posetune.version import __version__

    size, batch = clf.preprocess.size, "batch" if dynamic_batch else 1
    described = {
        IMAGE_INPUT: {"shape": [batch, 3, size, size],
                      "what": "float32 NCHW, RGB, (pixel / 255 - mean) / std after resize + center crop"},
        POSE_INPUT: {"shape": [batch, clf.meta.pose_dim],
                     "what": "float32 posetune.pose.features of BlazePose (mediapipe 0.10.14, model_complexity 1) "
                             "landmarks on the full image; all zeros (presence 0) when nobody is found"},
    }
    inputs = {name: described[name] for name in names}
    return {
        "format_version": 1, "posetune_version": __version__, "format": format,
        "backbone": clf.meta.backbone, "arch": clf.meta.arch, "strategy": clf.meta.strategy,
        "kind": clf.meta.kind, "pose_dim": clf.meta.pose_dim if clf.uses_pose else 0,
        "classes": clf.classes, "preprocessing": clf.preprocess.to_config(),
        "temperature": clf.temperature,  # probabilities = softmax(logits / temperature); the engines apply it
        "input_name": names[0], "output_name": OUTPUT_NAME, "input_shape": inputs[names[0]]["shape"],
        "input": inputs[names[0]]["what"], "inputs": inputs,
        "source_sha256": source_sha256, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _random_inputs(clf, n: int, names: Sequence[str], seed: int | None = None) -> tuple[np.ndarray, ...]:
    """Random float32 inputs of the graph, in ``names``' order; every other landmark row is zeros (nobody found).
    ``seed`` None: the fixed sample the exporter traces with."""
    from posetune.predict.onnx_engine import IMAGE_INPUT

    gen = np.random.default_rng(1 if seed is None else seed)
    size = clf.preprocess.size
    out = []
    for name in names:
        if name == IMAGE_INPUT:
            out.append(gen.standard_normal((n, 3, size, size)).astype(np.float32))
        else:
            pose = gen.standard_normal((n, clf.meta.pose_dim)).astype(np.float32)
            pose[1::2] = 0.0
            out.append(pose)
    return tuple(out)


def _reference(clf, names: Sequence[str], inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The torch engine's logits (the model as trained) for the graph's inputs."""
    import torch

    from posetune.predict.onnx_engine import IMAGE_INPUT, POSE_INPUT

    given = dict(zip(names, map(torch.from_numpy, inputs)))
    return clf.logits(given.get(IMAGE_INPUT), given.get(POSE_INPUT)).numpy()  # a pose run's model takes images None


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


def _in_batches(fn, inputs: Sequence[np.ndarray], dynamic_batch: bool) -> np.ndarray:
    """``fn(*inputs)`` at once, or one row at a time for a fixed batch of 1."""
    if dynamic_batch:
        return fn(*inputs)
    n = len(inputs[0])
    return np.concatenate([fn(*(x[i:i + 1] for x in inputs)) for i in range(n)]) if n else np.zeros((0, 0), np.float32)


def _write_onnx(model, sample: tuple, out: Path, opset: int, dynamic_batch: bool, names: Sequence[str],
                props: dict[str, str]) -> str:
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
        common = dict(input_names=list(names), output_names=[OUTPUT_NAME], opset_version=opset)
        # The exporters print progress on stdout, which belongs to --json output: keep it for errors only.
        log = io.StringIO()
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if "dynamo=True" in exporter:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    shapes = tuple({0: batch} for _ in names) if dynamic_batch else None
                    torch.onnx.export(model, sample, str(tmp_file), dynamo=True, dynamic_shapes=shapes,
                                      external_data=False, verbose=False, **common)
                else:
                    axes = {name: {0: "batch"} for name in (*names, OUTPUT_NAME)} if dynamic_batch else None
                    torch.onnx.export(model, sample, str(tmp_file), dynamo=False, dynamic_axes=axes, **common)
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

    def run(*inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(*map(torch.from_numpy, inputs)).float().numpy()

    return run


def _image_parity(clf, deployed, run_exported, paths: list[str], names: Sequence[str], dynamic_batch: bool) -> dict:
    """Torch engine (torch preprocessing + eager model) vs the deployed path on the same files.

    For ONNX the deployed path is the torch-free engine (numpy preprocessing + ONNX Runtime), so this
    also checks that its preprocessing matches; ``input_max_abs_delta`` shows any gap there. A pose/fusion run's
    landmark features are computed once (the torch engine's decode) and fed to both; a blank image is added, so
    a no-person row (all zeros) is always checked, and ``no_person`` counts those rows.
    """
    import torch

    from posetune.data.images import ImageError
    from posetune.predict.onnx_engine import IMAGE_INPUT

    items: list = list(paths)
    if clf.uses_pose:
        side = max(96, clf.preprocess.short_side)
        items.append(np.full((side, side, 3), 128, np.uint8))  # nobody there
    kept, tensors, features, nobody = [], [], [], 0
    for item in items:
        try:
            got = clf.decode(item)
        except ImageError:
            continue
        kept.append(item)
        if clf.uses_pose:
            got, pose_row, found = got
            features.append(pose_row)
            nobody += found is None
        tensors.append(clf.preprocess.eval_crop(got))
    labels = [item if isinstance(item, str) else "<blank image>" for item in kept]
    if not kept:
        empty = np.zeros((0, len(clf.classes)), np.float32)
        return parity_check(empty, empty)
    batch = clf.normalize(torch.stack(tensors))
    pose = torch.stack(features) if features else None
    reference = clf.logits(batch, pose).numpy()
    pose_rows = pose.numpy() if pose is not None else None
    if deployed is not None:
        inputs = deployed.preprocess(kept)
        result = parity_check(reference, deployed.logits(inputs, pose_rows), labels)
        result["input_max_abs_delta"] = float(np.abs(inputs - batch.contiguous().numpy()).max())
    else:
        graph_inputs = [batch.contiguous().numpy() if name == IMAGE_INPUT else pose_rows for name in names]
        result = parity_check(reference, _in_batches(run_exported, graph_inputs, dynamic_batch), labels)
    if clf.uses_pose:
        result["no_person"] = nobody
    return result


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
