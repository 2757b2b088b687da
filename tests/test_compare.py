"""`posetune compare`: leaderboard files and JSON, resume, unknown backbones, failing cells, budget, `best`."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest

import posetune
from posetune import cli
from posetune.comparison import LEADERBOARD_COLUMNS, bootstrap_interval, estimate_cell_seconds, mark_pareto

TINY = ["--image-size", "64", "--batch-size", "16", "--epochs", "1"]
BACKBONES = "test_efficientnet@random,test_resnet@random"


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """posetune.cli.main in-process (no interpreter start-up): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["posetune", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def yoga(tmp_path_factory) -> Path:
    """Three rendered poses at 64 px, a dozen train and four test images each."""
    from posetune.data.synth import render_dataset

    root = tmp_path_factory.mktemp("yoga") / "data"
    render_dataset(root, poses=["plank", "tree", "warrior2"], per_class=12, test_per_class=4, size=64)
    return root


@pytest.fixture(scope="module")
def sweep(yoga, tmp_path_factory) -> dict:
    """One small sweep through the CLI with --json: two tiny random-init backbones, linear + partial."""
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("sweep") / "cmp"
    args = ["posetune", "compare", str(yoga), "--backbones", BACKBONES, "--strategies", "linear,partial",
            "--top-k", "1", "--out", str(out), "--json", *TINY]
    mp.setattr(sys, "argv", args)
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        try:
            cli.main()
        except SystemExit as exc:
            assert not exc.code
    mp.undo()
    return {"out": out, "json": json.loads(stdout.getvalue()), "args": args[2:]}


def test_leaderboard_files_and_json(sweep):
    out, result = sweep["out"], sweep["json"]
    rows = result["rows"]
    # One row per backbone's stage-1 probe (its linear cell) + one per stage-2 cell of the top-1 backbone.
    pairs = {(r["backbone"], r["strategy"]) for r in rows}
    assert {("test_efficientnet@random", "linear"), ("test_resnet@random", "linear")} <= pairs
    assert len(rows) == 3 and sum(r["strategy"] == "partial" for r in rows) == 1
    assert [r["rank"] for r in rows] == [1, 2, 3]
    vals = [r["val_accuracy"] for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:
        assert set(r) == set(LEADERBOARD_COLUMNS)
        assert r["status"] == "ok" and r["weights"] == "random" and r["image_size"] == 64
        assert r["params_m"] > 0 and r["gmacs"] > 0 and r["latency_ms"] > 0 and r["images_per_s"] > 0
        assert 0 <= r["test_accuracy"] <= 1 and r["err_kind"] == "ci95" and r["test_accuracy_err"] >= 0
        assert Path(r["run"], "model.safetensors").is_file() and Path(r["run"], "cell.json").is_file()
    probes = [r for r in rows if r["strategy"] == "linear"]
    assert all(r["knn_test_accuracy"] is not None for r in probes)
    with open(out / "leaderboard.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [c for c in csv_rows[0]] == list(LEADERBOARD_COLUMNS) and len(csv_rows) == 3
    md = (out / "leaderboard.md").read_text()
    assert md.count("\n| ") == 4 and "test_resnet@random" in md  # header + 3 rows
    assert json.loads((out / "leaderboard.json").read_text())["rows"] == rows
    for png in ("accuracy_vs_latency.png", "accuracy_by_strategy.png"):
        assert (out / png).stat().st_size > 1000
    assert any(r["pareto"] for r in rows)
    # No figure masks in these data: the background-reliance column is absent (null, not 0) and not shown.
    assert result["background"] is None and all(r["background_reliance"] is None for r in rows)
    assert "bg reliance" not in md and all("background" not in json.loads(Path(r["run"], "cell.json").read_text())
                                           for r in rows)


def test_best_is_usable_by_load_predict_and_evaluate(sweep, yoga):
    out, rows = sweep["out"], sweep["json"]["rows"]
    best = out / "best"
    assert best.exists() and Path(sweep["json"]["best"]) == best
    assert best.resolve() == Path(rows[0]["run"]).resolve()
    clf = posetune.load(best, device="cpu")
    images = sorted((yoga / "TEST").rglob("*.jpg"))[:5]
    preds = clf.predict([str(p) for p in images])
    assert len(preds) == 5 and all(p.error is None and p.label in ("plank", "tree", "warrior2") for p in preds)
    # The saved model reproduces the leaderboard's test score (the probe folded into the head, or the trained cell).
    metrics = posetune.evaluate(best, yoga, split="test", device="cpu", plot=False)
    assert abs(metrics["accuracy"] - rows[0]["test_accuracy"]) <= 1 / metrics["n"] + 1e-9


def test_rerun_skips_finished_cells(sweep, monkeypatch, capsys):
    out = sweep["out"]
    cells = sorted((out / "cells").glob("*/cell.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    t0 = time.perf_counter()
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", *sweep["args"])
    assert code == 0
    assert err.count("already probed") == 2 and err.count("finished earlier, skipped") == 1
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps  # nothing was retrained or rewritten
    again = json.loads(stdout)
    assert [(r["backbone"], r["strategy"], r["test_accuracy"]) for r in again["rows"]] == [
        (r["backbone"], r["strategy"], r["test_accuracy"]) for r in sweep["json"]["rows"]]
    assert again["seconds"]["stage2"] < 1.0 and time.perf_counter() - t0 < 10


@pytest.fixture(scope="module")
def masked_yoga(tmp_path_factory) -> Path:
    """Three rendered poses at 64 px with the renderer's figure masks (`data synth --masks`)."""
    from posetune.data.synth import render_dataset

    root = tmp_path_factory.mktemp("masked-yoga") / "data"
    render_dataset(root, poses=["plank", "tree", "warrior2"], per_class=12, test_per_class=4, size=64, masks=True)
    return root


def test_background_reliance_column_on_masked_synthetic_data(masked_yoga, tmp_path, monkeypatch, capsys):
    import posetune.cam as cam
    from posetune.comparison.reliance import reliance_images, reliance_split
    from posetune.data.layouts import discover
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    out = tmp_path / "cmp"

    def sweep_args(images: int) -> list:
        return ["compare", masked_yoga, "--backbones", "test_efficientnet@random", "--strategies", "linear,partial",
                "--top-k", "1", "--reliance-images", images, "--out", out, *TINY]

    args = sweep_args(6)
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    background = result["background"]
    assert {k: background[k] for k in ("split", "images", "requested")} == {"split": "test", "images": 6,
                                                                            "requested": 6}
    assert 0.0 < background["background_area"] < 1.0
    rows = {r["strategy"]: r for r in result["rows"]}
    assert set(rows) == {"linear", "partial"}
    # Each cell's figure is the mean share of its own maps outside the figure, on the same 6 test images
    # (two per class, in turn), measured again here from the cell's run folder.
    index = discover(masked_yoga, val_fraction=0.15, seed=0)
    paths = reliance_images(reliance_split(index)[1], 6)
    assert len({Path(p).parent.name for p in paths}) == 3
    for row in rows.values():
        clf = Classifier(RunDir(row["run"]), device="cpu", optimize=False)
        again = cam.figure_reliance(clf, masked_yoga, paths)
        saved = json.loads(Path(row["run"], "cell.json").read_text())["background"]
        assert saved["setting"] == {"split": "test", "images": 6, "requested": 6}
        # An all-zero map (Grad-CAM's ReLU over a random-init model's gradients can give one; it depends on the
        # thread count's rounding) is left out of the mean, the same way in both measurements.
        assert again["background_reliance_n"] == saved["background_reliance_n"] >= 4
        assert row["background_reliance"] == pytest.approx(again["background_reliance"], abs=1e-6)
        assert 0.0 <= row["background_reliance"] <= 1.0
    md = (out / "leaderboard.md").read_text()
    assert "| bg reliance |" in md and "on 6 test images with figure masks" in md
    assert f"{rows['partial']['background_reliance']:.3f}" in md
    code, table, _ = run_cli(monkeypatch, capsys, *args)  # the people's table: every cell reused
    assert code == 0 and "bg reliance" in table and "outside the figure" in table

    # A rerun measures nothing again (the figures come from cell.json) ...
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/cell.json")}

    def no_maps(*_args, **_kwargs):
        raise AssertionError("background reliance measured again")

    monkeypatch.setattr(cam, "figure_reliance", no_maps)
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    assert [r["background_reliance"] for r in json.loads(stdout)["rows"]] == [r["background_reliance"]
                                                                             for r in result["rows"]]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    monkeypatch.undo()
    # ... unless the images asked for change; and 0 turns the column off (absent, not zero).
    code, stdout, err = run_cli(monkeypatch, capsys, *sweep_args(3), "--json")
    assert code == 0, err
    fewer = json.loads(stdout)
    assert fewer["background"]["images"] == 3
    for r in fewer["rows"]:  # measured again on 3 (an all-zero map, as above, may leave 2)
        again = json.loads(Path(r["run"], "cell.json").read_text())["background"]
        assert again["setting"]["images"] == 3 and 2 <= again["background_reliance_n"] <= 3
    code, stdout, err = run_cli(monkeypatch, capsys, *sweep_args(0), "--json")
    assert code == 0, err
    off = json.loads(stdout)
    assert off["background"] is None and all(r["background_reliance"] is None for r in off["rows"])
    assert "bg reliance" not in (out / "leaderboard.md").read_text()


def test_unknown_backbone_fails_before_any_work(tmp_path, yoga, monkeypatch, capsys):
    out = tmp_path / "never"
    code, _, err = run_cli(monkeypatch, capsys, "compare", yoga, "--backbones", "test_resnet@random,resnet_50",
                           "--out", out)
    assert code == 2
    assert err.strip().count("\n") == 0 and "resnet_50" in err and "did you mean" in err and "resnet50" in err
    assert not out.exists()


def test_failing_cells_are_recorded_and_the_sweep_goes_on(tmp_path, yoga, monkeypatch, capsys):
    import torch
    from safetensors.torch import save_file

    import posetune.training as training

    bad = tmp_path / "wrong.safetensors"  # exists (so the spec is valid) but fits no test_resnet
    save_file({"conv_stem.weight": torch.zeros(3, 3, 3, 3)}, str(bad))
    real_train = training.train

    def train_or_fail(data, **options):
        if options["strategy"] == "full":
            raise RuntimeError("simulated out-of-memory")
        return real_train(data, **options)

    monkeypatch.setattr(training, "train", train_or_fail)
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", yoga, "--backbones",
                                f"test_efficientnet@random,test_resnet@{bad}", "--strategies", "linear,partial,full",
                                "--top-k", "1", "--out", out, "--json", *TINY)
    assert code == 0
    rows = {(r["backbone"], r["strategy"]): r for r in json.loads(stdout)["rows"]}
    broken = rows[(f"test_resnet@{bad}", "linear")]
    assert broken["status"] == "failed" and "do not fit" in broken["error"]
    assert broken["rank"] > max(r["rank"] for r in rows.values() if r["status"] == "ok")  # failures sort last
    assert rows[("test_efficientnet@random", "full")]["status"] == "failed"
    assert "simulated out-of-memory" in rows[("test_efficientnet@random", "full")]["error"]
    assert rows[("test_efficientnet@random", "partial")]["status"] == "ok"  # the sweep went on
    assert (out / "best").resolve() in {Path(r["run"]).resolve() for r in rows.values() if r["status"] == "ok"}
    assert "failed" in (out / "leaderboard.md").read_text()


def test_budget_skips_cells_with_a_reason(tmp_path, yoga, monkeypatch, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", yoga, "--backbones", "test_resnet@random",
                                "--strategies", "partial,full", "--seeds", "2", "--budget-minutes", "0.001",
                                "--out", out, "--json", *TINY)
    assert code == 0
    result = json.loads(stdout)
    assert [(s["strategy"], s["seed"]) for s in result["skipped"]] == [("partial", 0), ("full", 0), ("partial", 1),
                                                                       ("full", 1)]
    assert all("budget" in s["reason"] and s["estimated_seconds"] > 0 for s in result["skipped"])
    assert [r["strategy"] for r in result["rows"]] == ["linear (probe)"]  # stage 1 always runs
    assert "skipped test_resnet-random-partial-s0" in err
    assert "Skipped cells" in (out / "leaderboard.md").read_text()


def test_estimates_scale_with_epochs_and_correction():
    probe = {"images_per_s": 100.0, "n_train": 90, "n_val": 10, "n_test": 20}
    one = estimate_cell_seconds(probe, epochs=1)
    assert one == pytest.approx((3 * 90 + 2 * 10 + 20) / 100)
    assert estimate_cell_seconds(probe, epochs=4) > 3 * one
    assert estimate_cell_seconds(probe, epochs=1, correction=2.0) == pytest.approx(2 * one)


def test_bootstrap_interval_and_pareto():
    assert bootstrap_interval([[5, 0], [0, 5]]) == {"accuracy": (1.0, 1.0), "macro_f1": (1.0, 1.0)}
    lo, hi = bootstrap_interval([[30, 10], [10, 30]])["accuracy"]
    assert lo < 0.75 < hi and hi - lo < 0.3
    rows = [{"test_accuracy": 0.9, "latency_ms": 10.0}, {"test_accuracy": 0.8, "latency_ms": 5.0},
            {"test_accuracy": 0.7, "latency_ms": 8.0}, {"test_accuracy": None, "latency_ms": 1.0}]
    mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, True, False, False]


def test_stage2_asks_the_strategy_objects(monkeypatch, tmp_path):
    from posetune import strategies
    from posetune.comparison import stage2_cells

    extra = strategies.Strategy("full-again", "a second base-training strategy, for this test", 1e-3, 1)
    monkeypatch.setitem(strategies.STRATEGIES, extra.name, extra)
    assert strategies.probe_strategy().name == "linear"  # the one that trains only the head
    cells = stage2_cells(tmp_path, ["resnet18@random"], ["linear", "full-again", "partial"], seeds=2)
    assert [c.name for c in cells] == ["resnet18-random-full-again-s0", "resnet18-random-partial-s0",
                                       "resnet18-random-full-again-s1", "resnet18-random-partial-s1"]
    assert all(c.path.parent == tmp_path / "cells" for c in cells)


def test_probe_rows_are_labelled_from_the_strategy_object():
    from posetune.comparison import leaderboard_rows

    probe = {"status": "ok", "backbone": "b", "strategy": "linear", "seed": 0, "run": "r0", "val_accuracy": 0.5,
             "knn_val_accuracy": 0.4, "knn_test_accuracy": 0.3, "test": None}
    tuned = {"status": "ok", "backbone": "b", "strategy": "partial", "seed": 0, "run": "r1", "val_accuracy": 0.6,
             "test": None}
    rows = leaderboard_rows({"b": probe}, [tuned], ["partial"])
    assert [(r["strategy"], r["knn_test_accuracy"]) for r in rows] == [("partial", None), ("linear (probe)", 0.3)]
    asked = leaderboard_rows({"b": probe}, [tuned], ["linear", "partial"])
    assert [r["strategy"] for r in asked] == ["partial", "linear"]


def test_training_cells_share_the_sweeps_decoded_cache_without_out(monkeypatch, tmp_path):
    """The default OUT (no --out) is computed by compare; a cell finds the sweep from its own folder."""
    import types

    import posetune.training as training
    from posetune.comparison import Cell, train_cell
    from posetune.console import Reporter
    from posetune.options import CompareOptions

    seen = {}

    def fake_train(data, **options):
        seen.update(options)
        return types.SimpleNamespace(metrics={"val": {"accuracy": 0.5, "macro_f1": 0.5}}, train_seconds=1.0,
                                     history=[{}])

    monkeypatch.setattr(training, "train", fake_train)
    cell = Cell.at(tmp_path / "sweep", "test_resnet@random", "partial", 0)
    result = train_cell(cell, CompareOptions(data="DATA", out=None), {"k": 1}, Reporter())
    assert result["status"] == "ok" and seen["cache_dir"] == str(tmp_path / "sweep" / "decoded-cache")
    assert seen["out"] == str(cell.path) and (cell.path / "cell.json").is_file()


@pytest.fixture(scope="module")
def masked_poses(tmp_path_factory) -> Path:
    """Three rendered poses at 128 px (BlazePose finds most figures at this size) with figure masks, and a landmark
    cache of the module's own."""
    from posetune.data.synth import render_dataset

    root = tmp_path_factory.mktemp("poses") / "data"
    render_dataset(root, poses=["plank", "tree", "goddess"], per_class=8, test_per_class=3, size=128, masks=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSETUNE_CACHE", str(tmp_path_factory.mktemp("pose-cache")))
        yield root


def test_compare_ranks_image_pose_and_fusion_backbones_with_landmark_costs(masked_poses, tmp_path, monkeypatch,
                                                                           capsys):
    """The three kinds side by side, through both stages and a budget: pose kinds' per-image costs include
    BlazePose's measured ms, their counts are of the whole model, their background reliance is null with a
    reason, and their probe cells are runs that load and predict."""
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(monkeypatch, capsys, "compare", masked_poses, "--backbones",
                                "test_efficientnet@random,pose,test_efficientnet+pose@random", "--strategies",
                                "linear,partial", "--top-k", "3", "--budget-minutes", "30", "--reliance-images", "3",
                                "--out", out, "--json", *TINY)
    assert code == 0, err
    result = json.loads(stdout)
    assert not result["skipped"]
    rows = {(r["backbone"].split("@")[0], r["strategy"]): r for r in result["rows"]}
    kinds = {"test_efficientnet": "image", "pose": "pose", "test_efficientnet+pose": "fusion"}
    assert set(rows) == {(b, s) for b in kinds for s in ("linear", "partial")}
    assert all(r["status"] == "ok" and r["kind"] == kinds[b] and r["test_accuracy"] is not None
               for (b, _), r in rows.items())
    image, pose, fusion = (rows[(b, "linear")] for b in kinds)
    assert image["landmark_ms"] is None and image["background_reliance"] is not None
    for row in (pose, fusion):
        assert row["landmark_ms"] > 0 and row["latency_ms"] > row["landmark_ms"]
        assert row["images_per_s"] < 1000 / row["landmark_ms"]  # BlazePose is in the per-image cost
        assert row["background_reliance"] is None
        background = json.loads(Path(row["run"], "cell.json").read_text())["background"]
        assert background["background_reliance"] is None and "landmark" in background["reason"]
        meta = posetune.load(row["run"]).meta
        assert meta.kind == kinds[row["backbone"].split("@")[0]] and set(meta.no_person) == {"train", "val", "test"}
        test_image = sorted((masked_poses / "TEST").rglob("*.jpg"))[0]
        assert posetune.load(row["run"]).predict([str(test_image)])[0].label in ("plank", "tree", "goddess")
    assert fusion["params_m"] > image["params_m"] and fusion["gmacs"] >= image["gmacs"] > pose["gmacs"]
    assert "landmarks ms" in (out / "leaderboard.md").read_text()


def test_pose_specs_without_mediapipe_are_one_line_before_out_is_made(tmp_path, yoga, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    out = tmp_path / "cmp"
    code, _, err = run_cli(monkeypatch, capsys, "compare", yoga, "--backbones", "test_resnet@random,pose",
                           "--out", out, *TINY)
    assert code == 2 and "posetune[pose]" in err and len(err.strip().splitlines()) == 1 and not out.exists()
