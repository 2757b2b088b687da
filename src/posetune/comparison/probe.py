"""Stage 1 of `posetune compare`: every backbone once per image, a probe and a k-NN on its features.

Every image is decoded once for the whole sweep; each backbone's inference-optimised copy turns the
images into pooled features, :mod:`posetune.features` fits an L-BFGS logistic probe and a k-NN on them,
and the probe, folded into the model's head, is saved as the backbone's probe cell: a normal run folder
of the registered strategy that trains only the head (``linear``), so predict / evaluate / export / serve
work on it. Pretrained features predict the fine-tuned ranking (Kornblith et al. 2019), so stage 2
fine-tunes only the best backbones of this stage.

>>> probes = run_stage1(opts, specs, index, device, out, key, reporter, seconds)   # doctest: +SKIP
>>> top_backbones(probes, 2)                                                      # doctest: +SKIP
['efficientnet_lite0', 'resnet18@random']
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from posetune.comparison.cells import Cell, summarize_test
from posetune.comparison.costs import landmark_ms, measure_costs
from posetune.comparison.pose_probe import TrainedHead, fit_pose_head, no_person_rows, with_landmarks
from posetune.console import Reporter
from posetune.errors import UsageError
from posetune.options import CompareOptions
from posetune.pose import pose_dim_of
from posetune.runtime import warm_imports
from posetune.tracking import NullTracker, Tracker

if TYPE_CHECKING:  # torch-heavy; imported inside the functions that run
    from posetune.data.pipeline import Preprocess
    from posetune.features import Knn, Probe

EXTRACT_BATCH = 32  # stage-1 batch: its throughput is the leaderboard's images/s at batch 32
SPLITS = ("train", "val", "test")
HEAD_FITS = {False: "L-BFGS logistic regression on cached features (posetune compare stage 1)",
             True: "the linear strategy's head (landmark embedding + classifier, AdamW) on cached "
                   "[pooled | landmark] features (posetune compare stage 1)"}


@dataclass
class DecodedImages:
    """Every image of the sweep decoded once, at the largest short side any of its backbones needs; with a
    `pose` / `NAME+pose` backbone in the sweep, every image's landmark features too (BlazePose once per file)."""

    decoder: Preprocess
    images: dict  # path -> decoded image
    pose: dict | None = None  # path -> landmark feature row (torch float32), when a backbone uses landmarks
    landmark_ms: float | None = None  # BlazePose milliseconds per image, measured on this data

    def for_backbone(self, preprocess: Preprocess, samples: list) -> list:
        """The samples' images at this backbone's short side."""
        resize = _resizer(self.decoder, preprocess)
        return [resize(self.images[s.path]) for s in samples]


def run_stage1(opts: CompareOptions, specs: list, index, device, out: Path, key: dict, reporter: Reporter,
               seconds: dict[str, float], tracker: Tracker = NullTracker()) -> dict[str, dict]:
    """Probe every backbone (skipping finished probe cells), each probe cell logged to a child of ``tracker``;
    returns backbone spec -> probe cell result."""
    t0 = time.perf_counter()
    probes, todo = _plan_probes(opts, specs, index, out, key, reporter)
    if not todo:
        seconds.update(stage1=0.0, profile=0.0, decode=0.0)
        return probes

    # scikit-learn (probe, k-NN, metrics) and matplotlib (the cells' plots): ~3 s of imports on a 2-core CPU, done
    # while the images decode, and joined before this thread can import them itself (runtime.warm_imports)
    warm = warm_imports(["sklearn.linear_model", "sklearn.metrics", "sklearn.neighbors"], then=_pyplot)
    decoded = _decode_once(todo, index, reporter, seconds)
    warm.join()
    if any(spec.uses_pose for _, spec, _ in todo):
        _landmarks_once(decoded, index, reporter, seconds)
    profile_s = 0.0
    for cell, spec, preprocess in todo:
        try:
            probe, prof_s = probe_backbone(cell, spec, preprocess, decoded, index, device, opts, key, reporter)
            profile_s += prof_s
        except Exception as exc:  # noqa: BLE001 - one backbone failing must not stop the sweep
            reporter.stop()
            probe = cell.save_failure(exc)
            reporter.warn(f"stage 1: {cell.backbone} failed: {probe['error']}")
        probes[cell.backbone] = probe
        _track_probe(tracker, cell, probe, opts)
    seconds["profile"] = round(profile_s, 2)
    seconds["stage1"] = round(time.perf_counter() - t0 - profile_s, 2)
    rows = [{"backbone": b, "probe val acc": p.get("val_accuracy"), "k-NN val acc": p.get("knn_val_accuracy"),
             "images/s": p.get("images_per_s"), "status": p["status"]} for b, p in probes.items()]
    reporter.table("stage 1: linear probe + k-NN on pretrained features", sorted(
        rows, key=lambda r: (r["probe val acc"] or -1, r["k-NN val acc"] or -1), reverse=True))
    return probes


def _track_probe(tracker: Tracker, cell: Cell, probe: dict, opts: CompareOptions) -> None:
    """A probe cell as a child of the sweep's tracker: what it was, and its scores (one fit, no epochs)."""
    from posetune.run import RunDir

    child = tracker.child(cell.name, cell.path)
    child.log_params({"backbone": cell.backbone, "strategy": cell.strategy, "seed": cell.seed, "stage": "probe",
                      "image_size": probe.get("image_size", opts.image_size), "probe_C": probe.get("probe_C"),
                      "knn_k": probe.get("knn_k")})
    if probe["status"] == "ok":
        child.log_results(cell.path, RunDir(cell.path).read_json("metrics.json"))
    child.close("FINISHED" if probe["status"] == "ok" else "FAILED")


def top_backbones(probes: dict[str, dict], k: int) -> list[str]:
    """The k backbones stage 2 fine-tunes: best probe val accuracy, then k-NN val accuracy, then val loss."""
    ranked = sorted((p for p in probes.values() if p["status"] == "ok"), key=_probe_score, reverse=True)
    return [p["backbone"] for p in ranked[:k]]


def _probe_score(p: dict) -> tuple:
    return (p.get("val_accuracy") or 0.0, p.get("knn_val_accuracy") or 0.0, -(p.get("val_loss") or 0.0))


def _plan_probes(opts: CompareOptions, specs: list, index, out: Path, key: dict,
                 reporter: Reporter) -> tuple[dict[str, dict], list[tuple[Cell, object, Preprocess]]]:
    """(finished probe cells loaded, (cell, spec, preprocess) of those still to run)."""
    import torch

    from posetune.backbones import build_spec_model, data_config
    from posetune.data.pipeline import Preprocess
    from posetune.strategies import probe_strategy

    strategy = probe_strategy().name
    probes: dict[str, dict] = {}
    todo = []
    for spec_str, spec in zip(opts.backbones, specs):
        cell = Cell.at(out, spec_str, strategy, 0)
        saved = cell.load(key)
        if saved:
            probes[spec_str] = saved
            reporter.info(f"stage 1: {spec_str} already probed ({cell.path}), skipped")
            continue
        with torch.device("meta"):  # configs and sizes without allocating weights
            model = build_spec_model(spec, len(index.classes), pose_dim_of(spec))
            preprocess = Preprocess.from_config(data_config(model, opts.image_size))
        todo.append((cell, spec, preprocess))
    return probes, todo


def _decode_once(todo: list, index, reporter: Reporter, seconds: dict[str, float]) -> DecodedImages:
    """One decode for every backbone, at the largest short side any of them needs; drops unreadable images."""
    from posetune.data.pipeline import decode_all

    decoder = max((p for *_, p in todo), key=lambda p: p.short_side)
    paths = [s.path for s in index.samples]
    td = time.perf_counter()
    images, failed = decode_all(paths, decoder, progress=reporter.start("decode images", len(paths)))
    reporter.stop()
    seconds["decode"] = round(time.perf_counter() - td, 2)
    index.drop(failed)
    for path, reason in failed.items():
        reporter.warn(f"skipped {path}: {reason}")
    return DecodedImages(decoder, {p: img for p, img in zip(paths, images) if img is not None})


def _landmarks_once(decoded: DecodedImages, index, reporter: Reporter, seconds: dict[str, float]) -> None:
    """Every image's landmark features (the landmark cache: BlazePose once per file, shared with stage 2's
    training runs) and BlazePose's measured milliseconds per image, into ``decoded``."""
    import torch

    from posetune.pose.cache import LandmarkCache
    from posetune.pose.matrix import feature_matrix

    paths = [s.path for s in index.samples if s.path in decoded.images]
    t = time.perf_counter()
    decoded.landmark_ms = landmark_ms(paths)  # first: it also starts the shared detector
    rows = feature_matrix(paths, LandmarkCache(), reporter)
    decoded.pose = dict(zip(paths, torch.from_numpy(rows)))
    seconds["landmarks"] = round(time.perf_counter() - t, 2)


def _pyplot() -> None:
    from posetune.report import pyplot

    pyplot()


def probe_backbone(cell: Cell, spec, preprocess: Preprocess, decoded: DecodedImages, index, device,
                   opts: CompareOptions, key: dict, reporter: Reporter) -> tuple[dict, float]:
    """Features of every image, the probe + k-NN, the probe cell's run folder, and the backbone's costs;
    returns (the cell's result, seconds spent measuring costs)."""
    import torch
    from threadpoolctl import threadpool_limits

    from posetune.backbones import create_backbone
    from posetune.devices import place
    from posetune.features import fit_knn

    t_build = time.perf_counter()
    model, _ = create_backbone(spec, num_classes=len(index.classes), pose_dim=pose_dim_of(spec))
    place(model, device).eval()
    net, forward = _inference_net(model, spec, preprocess)
    feats, forward_s = _extract(net, cell.backbone, preprocess, decoded, index, device, reporter,
                                decoded.pose if spec.uses_pose else None)
    build_s = time.perf_counter() - t_build - sum(forward_s.values())

    t_fit = time.perf_counter()
    # Small matrices: one BLAS thread is faster, and spinning threads stall badly on a busy machine.
    with threadpool_limits(limits=1):
        probe = _fit_probe(model, spec, feats, opts, device)
        knn = fit_knn(*feats["train"], *feats["val"])
    fit_s = time.perf_counter() - t_fit
    metrics, val_loss = _probe_metrics(probe, knn, feats, index.classes)

    t_prof = time.perf_counter()
    costs = measure_costs(forward, spec.arch, len(index.classes), preprocess.size, device, spec.kind,
                          pose_dim_of(spec) or 0, decoded.landmark_ms if spec.uses_pose else None)
    del net, forward
    profile_s = time.perf_counter() - t_prof

    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise UsageError(f"{cell.backbone}: its classifier is a {type(head).__name__}, not a Linear layer; "
                         "the probe cannot be saved as a run")
    probe.fold_into(head)
    train_seconds = forward_s["train"] + forward_s["val"] + fit_s  # what training the probe strategy would cost
    counts = {s: len(index.split(s)) for s in SPLITS}
    t_save = time.perf_counter()
    _save_probe_run(cell, model, spec, preprocess, index, opts, device, probe, metrics, train_seconds, val_loss,
                    counts, no_person_rows(spec, feats, index.classes))
    save_s = time.perf_counter() - t_save
    forward = sum(forward_s.values())
    result = {
        "status": "ok", "key": key, "backbone": cell.backbone, "strategy": cell.strategy, "seed": cell.seed,
        "run": str(cell.path), "arch": spec.arch, "kind": spec.kind, "weights": spec.weight_source,
        "image_size": preprocess.size, "val_accuracy": metrics["val"]["accuracy"],
        "val_macro_f1": metrics["val"]["macro_f1"], "val_loss": val_loss,
        "test": summarize_test(metrics.get("test")), "knn_val_accuracy": knn.val_accuracy,
        "knn_test_accuracy": _knn_accuracy(knn, feats["test"]), "knn_k": knn.k, "probe_C": probe.C,
        "train_seconds": round(train_seconds, 3), "forward_seconds": round(forward, 3),
        **_throughput(sum(counts.values()), forward, costs["landmark_ms"]),
        "n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"], **costs,
        "stage1_seconds": {"build": round(build_s, 3), "forward": round(forward, 3), "probe_and_knn": round(fit_s, 3),
                           "save_run": round(save_s, 3), "profile": round(profile_s, 3)},
    }
    cell.save(result)
    model.to("cpu")
    return result, profile_s


def _throughput(images: int, forward_s: float, landmark_ms: float | None) -> dict:
    """images_per_s: what predicting costs per image at batch 32, BlazePose's landmarks included (pose kinds);
    forward_images_per_s: the model alone on cached landmarks, what a training epoch pays (the estimates')."""
    forward_ips = images / max(forward_s, 1e-9)
    total_s = forward_s + images * (landmark_ms or 0.0) / 1000
    return {"images_per_s": round(images / max(total_s, 1e-9), 2), "forward_images_per_s": round(forward_ips, 2)}


def _inference_net(model, spec, preprocess: Preprocess) -> tuple:
    """(the image network features come from, or None for `pose`; the forward that latency is timed on).

    Both from an inference-optimised copy of the image network (BN folded, static padding): the same outputs,
    and the speed `posetune predict` gets. Fusion: the CNN's copy, then the model's own head on its features."""
    from posetune.inference import optimize_for_inference

    size = (3, preprocess.size, preprocess.size)
    if spec.kind == "pose":
        return None, model
    if spec.kind == "fusion":
        net, _ = optimize_for_inference(model.cnn, size)
        return net, lambda images, pose: model.fuse(net(images), pose)
    net, _ = optimize_for_inference(model, size)
    return net, net


def _fit_probe(model, spec, feats: dict, opts: CompareOptions, device) -> Probe | TrainedHead:
    """The L-BFGS logistic probe on an image backbone's features; a pose kind's head trained on its rows."""
    from posetune.features import fit_probe

    if spec.uses_pose:
        return fit_pose_head(model, feats, opts.batch_size, device)
    return fit_probe(*feats["train"], *feats["val"])


def _extract(net, name: str, preprocess: Preprocess, decoded: DecodedImages, index, device,
             reporter: Reporter, pose: dict | None = None) -> tuple[dict[str, tuple], dict[str, float]]:
    """(split -> (features, labels), split -> forward seconds) of every image through ``net``; with ``pose``
    (path -> landmark row) the rows are [pooled features | landmark features], or the landmark features alone
    where ``net`` is None (`pose`)."""
    from posetune.data.pipeline import DecodedDataset, make_loader
    from posetune.features import extract_features

    def loader(samples):
        ds = DecodedDataset(decoded.for_backbone(preprocess, samples), [s.label for s in samples], preprocess)
        if pose is not None:
            ds = with_landmarks(ds, [pose[s.path] for s in samples])
        return make_loader(ds, EXTRACT_BATCH, False, device)

    if net is not None and index.split(SPLITS[0]):
        # a new model's first batch builds its kernels (oneDNN primitives): untimed, so images/s is the steady
        # rate. (It does not explain why a fresh process measures ~0.6x a warm one's rate: issue 16's note.)
        extract_features(net, loader(index.split(SPLITS[0])[:EXTRACT_BATCH]), device, preprocess)
    advance = reporter.start(f"features {name}", sum(len(index.split(s)) for s in SPLITS))
    feats: dict[str, tuple] = {}
    forward_s: dict[str, float] = {}
    for split in SPLITS:
        t = time.perf_counter()
        feats[split] = extract_features(net, loader(index.split(split)), device, preprocess, advance)
        forward_s[split] = time.perf_counter() - t
    reporter.stop()
    return feats, forward_s


def _resizer(decoder: Preprocess, preprocess: Preprocess) -> Callable:
    """Decoded at the largest short side; bring an image to this backbone's short side if it differs."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    if preprocess.short_side == decoder.short_side:
        return lambda img: img
    mode = InterpolationMode(preprocess.interpolation) if preprocess.interpolation in ("bilinear", "bicubic",
                                                                                       "nearest") else None
    return lambda img: F.resize(img, preprocess.short_side, interpolation=mode or InterpolationMode.BICUBIC,
                                antialias=True)


def _knn_accuracy(knn: Knn, split: tuple) -> float | None:
    import torch.nn.functional as nnf

    feats, labels = split
    if not len(labels):
        return None
    return float((knn.model.predict(nnf.normalize(feats, dim=1).numpy()) == labels.numpy()).mean())


def _probe_metrics(probe: Probe, knn: Knn, feats: dict, classes: list[str]) -> tuple[dict, float | None]:
    """The probe's val and test metrics (splits without images left out) and its val cross-entropy."""
    import torch
    import torch.nn.functional as nnf

    from posetune.evaluation import compute_metrics

    metrics, val_loss = {}, None
    for split in ("val", "test"):
        x, y = feats[split]
        if not len(y):
            continue
        logits = torch.as_tensor(_softmax_logits(probe.logits(x)))
        metrics[split] = compute_metrics(y.tolist(), logits.argmax(1).tolist(), classes)
        metrics[split]["split"] = split
        if split == "val":
            val_loss = float(nnf.cross_entropy(logits.float(), y))
    metrics.setdefault("val", {"accuracy": None, "macro_f1": None})
    return metrics, val_loss


def _softmax_logits(decision):
    import numpy as np

    d = np.asarray(decision, dtype=np.float64)
    return np.stack([np.zeros_like(d), d], 1) if d.ndim == 1 else d


def _save_probe_run(cell: Cell, model, spec, preprocess: Preprocess, index, opts: CompareOptions, device,
                    probe: Probe | TrainedHead, metrics: dict, train_seconds: float, val_loss: float | None,
                    counts: dict, no_person: dict | None = None) -> None:
    """A normal run folder for the probe cell, so predict / evaluate / export / serve work on it."""
    from posetune import backbones, strategies
    from posetune.options import TrainOptions
    from posetune.run import RunDir, RunMeta

    cell.reset()  # a half-written folder from an interrupted run
    run = RunDir(cell.path).create()
    stages = backbones.model_stages(model)
    plan = strategies.make_plan(cell.strategy, stages)
    history = [{"epoch": 1, "val_loss": val_loss, "val_accuracy": metrics["val"]["accuracy"],
                "seconds": round(train_seconds, 3), "best": True, "C": probe.C}]
    meta = RunMeta(
        backbone=spec.name, arch=spec.arch, weight_source=spec.weight_source, classes=index.classes,
        preprocessing=preprocess.to_config(), strategy=cell.strategy, frozen_stages=plan.frozen, stage_lrs={},
        best_epoch=1, epochs_run=1, train_seconds=round(train_seconds, 2),
        train_images_per_s=round(counts["train"] / max(train_seconds, 1e-9), 2), data=str(opts.data),
        layout=index.layout, device=str(device), metrics=RunMeta.summarize(metrics),
        head={"fit": HEAD_FITS[isinstance(probe, TrainedHead)], "C": probe.C, "grid": probe.grid},
        kind=spec.kind, pose_dim=pose_dim_of(spec) or 0, no_person=no_person)
    model.to("cpu")
    run.save_model(model, meta)
    config = TrainOptions(data=str(opts.data), backbone=cell.backbone, strategy=cell.strategy, epochs=1,
                          batch_size=opts.batch_size, image_size=opts.image_size, val_fraction=opts.val_fraction,
                          device=opts.device, label_level=opts.label_level)
    run.write_config(dataclasses.asdict(config))
    run.write_results(meta, history, metrics, index.skipped, plan.table(stages),
                      history_columns=("epoch", "C", "val_loss", "val_accuracy", "seconds"))
    model.to(device)
