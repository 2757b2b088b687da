"""posetune: fine-tune pretrained image backbones into classifiers for your own classes.

The Python API mirrors the CLI, one function per command, same option names, the same checks
(a bad value raises :class:`posetune.errors.UsageError` before any file is written)::

    import posetune
    result = posetune.train("DATASET", strategy="partial", epochs=5, out="runs/yoga")
    metrics = posetune.evaluate("runs/yoga", "DATASET", split="test")
    clf = posetune.load("runs/yoga")
    clf.predict(["photo.jpg"])[0].label

Heavy imports (torch, timm) happen inside the functions, so ``import posetune`` is instant.
"""

from __future__ import annotations

from posetune.version import __version__

# Implementation modules are named apart from these functions (training.py, evaluation.py, ...):
# importing a submodule binds its name on the package and would shadow a function of that name.
__all__ = ["train", "evaluate", "load", "predict_paths", "predict_video", "list_backbones", "check_data", "synth", "demo", "compare", "export",
           "push", "lr_find",
           "__version__"]


def train(data=None, time_budget=None, **options):
    """Fine-tune a backbone on DATA; see `posetune train --help` for every option. ``time_budget="10m"``
    (also ``"90s"``, ``"1h"``): measure this machine and DATA, choose the backbone, image size, strategy,
    epochs and whether to refit on train + val that fit, and train within the budget + 10% (the decision is in
    RUN/model.json)."""
    if time_budget is not None:
        from posetune.comparison.budget import train_within_budget

        return train_within_budget(data, time_budget, **options)
    from posetune.training import train as _train

    return _train(data, **options)


def evaluate(run, data, **options) -> dict:
    """Metrics of a run folder on one split of DATA (as `posetune evaluate --json`; split="test" by default;
    ``min_confidence=P`` adds the coverage and accuracy at P)."""
    from posetune.evaluation import evaluate as _evaluate

    return _evaluate(run, data, **options)


def lr_find(data, **options) -> dict:
    """The LR range test (as `posetune lr-find --json`): lrs, losses, suggested_lr, plot."""
    from posetune.lr_range import lr_find as _lr_find

    return _lr_find(data, **options)


def load(run, device: str = "auto", engine: str = "torch"):
    """Load a run folder for prediction: ``posetune.load(RUN).predict(images)``.

    ``engine="onnx"`` predicts with RUN/model.onnx (`posetune export`) through ONNX Runtime, without torch;
    ``"auto"`` (the CLI's default) picks it when it matches the run's weights, else torch.
    """
    from posetune.predict import load as _load

    return _load(run, device=device, engine=engine)


def predict_paths(run, paths, **options):
    """Predict files or folders with a run folder (as `posetune predict`: top_k, batch_size, device, engine, tta,
    min_confidence ('unsure' below it); the engine is torch unless asked)."""
    from posetune.predict import predict_paths as _predict_paths

    return _predict_paths(run, paths, **options)


def predict_video(run, paths, **options):
    """Predict video files with a run folder (as `posetune predict RUN session.mp4`: fps, smooth, ema_alpha,
    min_hold, timeline, csv, batch_size, device, engine): one result per video with ``segments``, per-frame
    ``times``/``labels``, and ``error`` for an unreadable one; the engine is torch unless asked."""
    from posetune.video.prediction import predict_video as _predict_video

    return _predict_video(run, paths, **options)


def export(run, **options) -> dict:
    """Write RUN/model.onnx (or model.torchscript.pt, or with ``format="timm"`` the folder RUN/timm/ that
    ``timm.create_model("local-dir:RUN/timm", pretrained=True)`` loads) and check parity with PyTorch
    (as `posetune export --json`)."""
    if options.get("format") == "timm":
        from posetune.hub import export_timm

        return export_timm(run, **{k: v for k, v in options.items() if k != "format"})
    from posetune.exporting import export as _export

    return _export(run, **options)


def push(run, repo_id: str, **options) -> dict:
    """Export RUN as a timm folder and upload it to the Hugging Face Hub repo ``repo_id`` (as `posetune push --json`);
    ``dry_run=True`` only exports and lists the files."""
    from posetune.hub import push as _push

    return _push(run, repo_id, **options)


def list_backbones(name: str | None = None):
    """The backbone table, or one backbone's stages (as `posetune backbones [NAME]`)."""
    from posetune import backbones as _b
    from posetune.pose import FEATURE_DIM

    if name is None:
        return _b.list_backbones(pose_dim=FEATURE_DIM)
    return _b.describe_backbone(name, pose_dim=FEATURE_DIM)


def check_data(data, **options) -> dict:
    """The data audit (as `posetune data check --json`); ``label_issues=True`` adds likely mislabelled and
    out-of-place images (``report["label_issues"]``), ``fix_manifest="fixed.csv"`` a manifest to train from."""
    from posetune.label_issues import check_data as _check

    return _check(data, **options)


def synth(out, **options) -> dict:
    """Render the synthetic yoga dataset (as `posetune data synth`)."""
    from posetune.data.synth import render_dataset

    return render_dataset(out, **options)


def demo(out: str = "demo", **options) -> dict:
    """Synthetic data -> fine-tune -> evaluate -> predict (as `posetune demo`)."""
    from posetune.demo_run import run_demo

    return run_demo(out, **options)


def compare(data, **options):
    """Backbone x strategy sweep with a leaderboard and OUT/best (as `posetune compare`)."""
    from posetune.comparison import compare as _compare

    return _compare(data, **options)
