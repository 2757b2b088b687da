"""The timm folder of a run (`export --format timm`): config.json, the weights, the card; checked with timm."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from posetune.errors import CheckFailed, UsageError
from posetune.hub.card import base_model_of, card_title, image_counts, model_card, read_metrics
from posetune.io import TMP_SUFFIX, atomic_write_bytes, file_sha256, remove_orphans

if TYPE_CHECKING:
    from posetune.run import RunMeta


# Written in this order: config.json, the file that makes a folder posetune's timm export, comes last.
TIMM_FILES = ("model.safetensors", "confusion_test.png", "README.md", "config.json")
DEFAULT_SUBDIR = "timm"  # RUN/timm/, beside RUN/eval/
MARKER = "posetune"  # the config.json entry of an export
CONFIG_FORMAT_VERSION = 1
# What the loader and resolve_data_config read of the backbone's own pretrained_cfg; the rest (url, hub id,
# license, test-time sizes) describes the ImageNet checkpoint, not this model.
KEPT_CFG_KEYS = ("fixed_input_size", "first_conv", "classifier")


def export_timm(run: str | Path, out: str | Path | None = None, images: Sequence[str | Path] | None = None,
                n_random: int = 8, n_images: int = 16, strict: bool = True, repo_id: str | None = None,
                opset: int | None = None, dynamic_batch: bool = False) -> dict:
    """Write RUN as a timm folder (``out``, default RUN/timm/) and check it with timm's loader.

    An existing ``out`` is replaced only when every file in it is one this export writes, unchanged since an
    earlier export wrote it (or identical to what it writes now); anything else is refused. With ``strict`` a
    disagreement with the run's model raises :class:`CheckFailed` after the files are written; the result's
    ``problems`` lists them either way. ``repo_id`` only changes the model card's example.
    """
    if opset is not None:
        raise UsageError("--opset applies to --format onnx only")
    if dynamic_batch:
        raise UsageError("--dynamic-batch applies to onnx and torchscript; a timm model takes any batch size")
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    rundir = RunDir(run).require()
    kind = rundir.meta().kind
    if kind != "image":  # the landmark MLP and the fused head are no timm model
        raise UsageError(f"a timm folder (`export --format timm`, `push`) holds a timm image model, but {rundir} is a "
                         f"{kind} run (it uses landmarks): export it with `posetune export {rundir} --format onnx` "
                         "(or torchscript)")
    clf = Classifier(rundir, device="cpu", optimize=False)  # the reference is the model exactly as trained
    folder = TimmFolder(out if out is not None else rundir / DEFAULT_SUBDIR)
    t0 = time.perf_counter()
    files = {"model.safetensors": rundir.model_file.read_bytes()}
    if (rundir / "confusion_test.png").is_file():
        files["confusion_test.png"] = (rundir / "confusion_test.png").read_bytes()
    metrics = read_metrics(rundir)
    files["README.md"] = model_card(clf.meta, metrics, image_counts(rundir, metrics), title=card_title(repo_id, rundir),
                                    repo_id=repo_id, confusion="confusion_test.png" in files,
                                    base_model=base_model_of(clf.meta, clf.model),
                                    weights_sha256=hashlib.sha256(files["model.safetensors"]).hexdigest()).encode()
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    config = timm_config(clf.meta, clf.model)
    config[MARKER] = _provenance(clf.meta, digests)
    files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    folder.write(files)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    check = check_folder(folder.path, clf, images, n_random, n_images)
    check["check_seconds"] = round(time.perf_counter() - t0, 2)
    problems = check.pop("problems")
    result = {"format": "timm", "path": str(folder.path), "files": list(files),
              "bytes": sum(len(d) for d in files.values()), "export_seconds": round(seconds, 2),
              "load": f'timm.create_model("local-dir:{folder.path}", pretrained=True)', **check,
              "ok": not problems, "problems": problems}
    if strict and problems:
        raise CheckFailed(f"{folder.path} disagrees with the run's model: {'; '.join(problems)}")
    return result


def timm_config(meta: RunMeta, model) -> dict:
    """config.json as timm's ``save_for_hf`` writes it, for the run's classes and preprocessing."""
    pre = meta.preprocessing
    default = dict(model.pretrained_cfg)  # the backbone's ImageNet config: its model traits
    pretrained_cfg = {
        "input_size": list(pre["input_size"]), "interpolation": pre.get("interpolation", "bicubic"),
        "mean": list(pre["mean"]), "std": list(pre["std"]), "crop_pct": float(pre.get("crop_pct", 0.875)),
        "crop_mode": "center",  # posetune's eval transform: resize the short side to size / crop_pct, centre crop
        "num_classes": len(meta.classes),
        **{k: default[k] for k in KEPT_CFG_KEYS if default.get(k) is not None},
        "custom_load": False,  # the weights are a plain timm state dict
    }
    return {"architecture": meta.arch, "num_classes": len(meta.classes), "num_features": int(model.num_features),
            "label_names": list(meta.classes), "pretrained_cfg": pretrained_cfg}


def check_folder(path: Path, clf, images: Sequence[str | Path] | None = None, n_random: int = 8,
                 n_images: int = 16) -> dict:
    """Load ``path`` with timm's loader and compare it with the run's model (``clf``, a torch Classifier).

    ``data_config``: what ``timm.data.resolve_data_config`` makes of the folder (it must be the run's
    preprocessing). ``parity``: logits on random tensors, and on real images through timm's own transform
    against posetune's preprocessing (``input_max_abs_delta`` shows any gap there).
    """
    import numpy as np
    import timm
    import torch

    from posetune.data.images import ImageError, load_image
    from posetune.exporting import parity_check, parity_images

    try:
        model = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    except Exception as exc:  # noqa: BLE001 - timm raises many types (config, state dict keys, shapes)
        return {"data_config": {}, "parity": {},
                "problems": [f"timm cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"]}
    data_config = timm.data.resolve_data_config({}, model=model)
    problems = [f"timm resolves {k}={data_config.get(k)!r}, the run uses {v!r}"
                for k, v in _expected_data_config(clf.meta).items() if not _same(data_config.get(k), v)]
    size = clf.preprocess.size
    gen = np.random.default_rng(0)
    random_inputs = torch.from_numpy(gen.standard_normal((n_random, 3, size, size)).astype(np.float32))
    transform = timm.data.create_transform(**data_config)
    with torch.inference_mode():
        parity = {"random": parity_check(clf.model(random_inputs).float().numpy(), model(random_inputs).float().numpy())}
        ours, theirs, names = [], [], []
        with parity_images(clf.meta, images, n_images) as paths:
            for p in paths:
                try:
                    img = load_image(p)  # both paths start from the same upright RGB image
                except ImageError:
                    continue
                ours.append(clf.preprocess.eval_crop(clf.preprocess.decode(img)))
                theirs.append(transform(img))
                names.append(p)
        if names:
            ours_in, theirs_in = clf.normalize(torch.stack(ours)), torch.stack(theirs)
            parity["images"] = parity_check(clf.logits(ours_in).numpy(), model(theirs_in).float().numpy(), names)
            parity["images"]["input_max_abs_delta"] = float((ours_in - theirs_in).abs().max())
        else:
            empty = np.zeros((0, len(clf.classes)), np.float32)
            parity["images"] = parity_check(empty, empty)
    problems += [f"{kind}: {p}" for kind, c in parity.items() for p in c.pop("problems")]
    return {"data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
            "parity": parity, "problems": problems}


def _expected_data_config(meta: RunMeta) -> dict:
    pre = meta.preprocessing
    return {"input_size": list(pre["input_size"]), "mean": list(pre["mean"]), "std": list(pre["std"]),
            "interpolation": pre.get("interpolation", "bicubic"), "crop_pct": float(pre.get("crop_pct", 0.875)),
            "crop_mode": "center"}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9
    return a == b


def _provenance(meta: RunMeta, digests: dict[str, str]) -> dict:
    from posetune.version import __version__

    # No export time: the same run exports to the same bytes, which is what lets a rerun repair a killed export.
    return {"format_version": CONFIG_FORMAT_VERSION, "posetune_version": __version__, "backbone": meta.backbone,
            "arch": meta.arch, "strategy": meta.strategy, "weight_source": meta.weight_source,
            "run_created": meta.created, "source_sha256": digests["model.safetensors"], "files": digests}


class TimmFolder:
    """The export's folder. posetune writes only into an empty or missing folder or an earlier export of its
    own, and replaces a file only if it is what that export wrote (the sha256 in its config.json) or
    already what this one writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def recorded(self) -> dict[str, str] | None:
        """The files an earlier export recorded ({name: sha256}), or None if config.json is not posetune's."""
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        entry = config.get(MARKER) if isinstance(config, dict) else None
        files = entry.get("files") if isinstance(entry, dict) else None
        return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else None

    def check(self, files: dict[str, bytes]) -> list[str]:
        """Refuse a folder with anything posetune would lose; returns the earlier export's files to remove."""
        where = self.path
        if where.exists() and not where.is_dir():
            raise UsageError(f"--out {where} is a file; give a folder for the timm export")
        if not where.is_dir():
            return []
        recorded = self.recorded()
        strays, changed = [], []
        for entry in sorted(where.iterdir()):
            name = entry.name
            if _is_own_orphan(name):
                continue
            if name not in TIMM_FILES or entry.is_symlink() or not entry.is_file():
                strays.append(name)
            elif name == "config.json":
                if recorded is None and entry.read_bytes() != files["config.json"]:
                    strays.append(name)
            elif file_sha256(entry) not in {(recorded or {}).get(name),
                                           hashlib.sha256(files[name]).hexdigest() if name in files else None}:
                changed.append(name)
        if strays:
            raise UsageError(f"--out {where} holds files this export did not write ({', '.join(strays[:5])}); choose "
                             "another --out (posetune never writes into a folder it did not create)")
        if changed:
            raise UsageError(f"{where / changed[0]} was changed after posetune exported it; move it away or choose "
                             "another --out (posetune never overwrites what it did not write)")
        return [n for n in TIMM_FILES if n not in files and (where / n).is_file()]

    def write(self, files: dict[str, bytes]) -> None:
        stale = self.check(files)
        self.path.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.path, TIMM_FILES)
        for name in stale:  # e.g. the confusion matrix of an earlier export, when the run no longer has one
            (self.path / name).unlink()
        for name in TIMM_FILES:
            if name in files:
                atomic_write_bytes(self.path / name, files[name])


def _is_own_orphan(name: str) -> bool:
    return name.endswith(TMP_SUFFIX) and any(name.startswith(f".{n}.") for n in TIMM_FILES)


# ---------------------------------------------------------------- the model card
