"""`posetune data check --label-issues`: planted mislabels and an out-of-place photo are found, the report,
contact sheet and fix manifest are right, the user's files are untouched, bad options are one line, exit 2."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_shapes
from PIL import Image

import posetune
from posetune.data.layouts import discover
from posetune.errors import UsageError

# (file, its class folder, the folder it was moved into)
MOVED = [("circle_000.jpg", "circle", "square"), ("square_001.jpg", "square", "triangle"),
         ("triangle_002.jpg", "triangle", "circle")]
OPTIONS = ["--label-issues", "--image-size", "64"]  # efficientnet_lite0 with its offline weights, at 64 px


def run_check(*args, cwd=None, hold_warm_imports=False):
    """`posetune data check ARGS` in a fresh interpreter. ``hold_warm_imports`` holds the background thread that
    imports cleanlab at the start of cleanlab's own package import, until the main thread asks for cleanlab (at
    most 3 s), as a loaded machine might: the main thread must wait for that thread, not import beside it. That
    collision was `KeyError: 'cleanlab'`, exit 1 with no output, now and then under load; this hold reproduced it
    every time before the join (runtime.warm_imports)."""
    entry = ["-c", HOLD_WARM_IMPORTS_THEN_RUN] if hold_warm_imports else ["-m", "posetune"]
    return subprocess.run([sys.executable, *entry, "data", "check", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


# the hold is in the loader, not the finder: finders run under the global import lock, which would stop the main
# thread too
HOLD_WARM_IMPORTS_THEN_RUN = """
import importlib.machinery, sys, threading, time
main_asked = threading.Event()
class Hold:
    def find_spec(self, name, path=None, target=None):
        thread = threading.current_thread().name
        if thread == "MainThread" and name.split(".")[0] == "cleanlab":
            main_asked.set()
        elif thread == "posetune-warm-imports" and name == "cleanlab.dataset":
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
            loader = spec.loader
            class Held(importlib.machinery.SourceFileLoader):
                def exec_module(self, module):
                    if main_asked.wait(3):
                        time.sleep(1)
                    loader.exec_module(module)
            spec.loader = Held(loader.name, loader.path)
            return spec
sys.meta_path.insert(0, Hold())
sys.argv[0] = "posetune"
from posetune.cli import console_entry
console_entry()
"""


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: size, mtime and (files) content hash."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """30 shapes per class; three moved into the wrong class folder, and a photo that is no shape at all."""
    from skimage import data as photos

    root = write_shapes(tmp_path_factory.mktemp("li") / "shapes", 30, seed=0)
    for name, src, dst in MOVED:
        shutil.move(root / src / name, root / dst / name)
    Image.fromarray(photos.astronaut()).resize((72, 72)).save(root / "circle" / "photo.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def cli_run(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("li-out")
    before = snapshot(planted)
    proc = run_check(planted, *OPTIONS, "--json", "--fix-manifest", out / "fixed.csv", cwd=out, hold_warm_imports=True)
    return proc, out, before


def test_planted_issues_are_found_with_exit_1(cli_run, planted):
    proc, out, _ = cli_run
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip(), f"exit 1 and no JSON; stderr: {proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    result = report["label_issues"]
    flagged = {Path(r["path"]).name: r for r in result["issues"]}
    for name, true_class, folder in MOVED:
        assert flagged[name]["kind"] == "mislabel" and flagged[name]["given"] == folder
        assert flagged[name]["suggested"] == true_class
    assert flagged["photo.jpg"]["kind"] == "outlier" and flagged["photo.jpg"]["suggested"] is None
    assert len(flagged) <= len(MOVED) + 3, f"too many false alarms: {sorted(flagged)}"
    assert any("likely label issues" in p for p in report["problems"])


def test_json_shape(cli_run):
    result = json.loads(cli_run[0].stdout)["label_issues"]
    assert {"backbone", "weights", "image_size", "images", "classes", "folds", "repeats", "C", "oof_accuracy", "method",
            "issues", "counts", "contact_sheet", "fix_manifest", "warnings", "seconds"} <= set(result)
    assert result["backbone"] == "efficientnet_lite0" and result["image_size"] == 64 and result["folds"] == 5
    assert result["images"] == 91 and result["classes"] == ["circle", "square", "triangle"]
    scores = [r["score"] for r in result["issues"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert set(result["issues"][0]) == {"path", "split", "given", "suggested", "score", "kind", "p_given", "p_suggested"}
    assert result["counts"] == {"mislabel": sum(r["kind"] == "mislabel" for r in result["issues"]),
                                "outlier": sum(r["kind"] == "outlier" for r in result["issues"])}


def test_contact_sheet_is_written_outside_data(cli_run, planted):
    proc, out, _ = cli_run
    sheet = Path(json.loads(proc.stdout)["label_issues"]["contact_sheet"])
    assert sheet.name == "shapes-label-issues.png"
    with Image.open(out / sheet) as im:
        assert im.format == "PNG" and im.width > 100 and im.text["Software"].startswith("posetune")


def test_fix_manifest_trains_and_the_users_files_are_untouched(cli_run, planted):
    proc, out, before = cli_run
    assert snapshot(planted) == before  # nothing changed, added or removed under DATA
    manifest = out / "fixed.csv"
    with open(manifest, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    for name, true_class, folder in MOVED:
        assert (rows[name]["label"], rows[name]["given_label"], rows[name]["issue"]) == (true_class, folder, "mislabel")
    assert rows["photo.jpg"]["exclude"] == "1" and rows["photo.jpg"]["issue"] == "outlier"
    index = discover(manifest, val_fraction=0.0)
    labels = {Path(s.path).name: index.classes[s.label] for s in index.samples}
    assert len(labels) == 90 and "photo.jpg" not in labels
    assert all(labels[name] == true_class for name, true_class, _ in MOVED)
    # The fixed manifest audits clean: the excluded row is no unreadable file.
    report = posetune.check_data(manifest)
    assert report["unreadable"] == [] and len(report["excluded"]) == 1


def test_the_python_api_returns_what_json_prints(cli_run, planted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = json.loads(cli_run[0].stdout)["label_issues"]
    api = json.loads(json.dumps(posetune.check_data(planted, label_issues=True, image_size=64)["label_issues"],
                                default=str))
    assert set(api) == set(cli)
    assert [(r["path"], r["kind"], r["suggested"]) for r in api["issues"]] == \
        [(r["path"], r["kind"], r["suggested"]) for r in cli["issues"]]
    assert (tmp_path / "shapes-label-issues.png").is_file() and api["fix_manifest"] is None


def test_outputs_posetune_did_not_write_are_refused(cli_run, planted, tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("my,own\n1,2\n")
    with pytest.raises(UsageError, match="did not write"):
        posetune.check_data(planted, label_issues=True, fix_manifest=mine)
    assert mine.read_text() == "my,own\n1,2\n"
    fixed = cli_run[1] / "fixed.csv"
    edited = tmp_path / "edited.csv"
    shutil.copy(fixed, edited)
    shutil.copy(f"{fixed}.json", f"{edited}.json")
    with open(edited, "a") as fh:
        fh.write("\n")
    with pytest.raises(UsageError, match="edited after posetune wrote it"):
        posetune.check_data(planted, label_issues=True, fix_manifest=edited)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(UsageError, match="did not write"):
        posetune.check_data(planted, label_issues=True, contact_sheet=photo)
    with pytest.raises(UsageError, match="inside DATA"):
        posetune.check_data(planted, label_issues=True, fix_manifest=planted / "fixed.csv")


@pytest.mark.parametrize("args, flag", [
    (["--label-issues", "--folds", "1"], "--folds"),
    (["--fix-manifest", "fixed.csv"], "--fix-manifest"),
    (["--label-issues", "--contact-sheet", "sheet.jpg"], "--contact-sheet"),
])
def test_a_bad_option_is_one_line_exit_2(planted, tmp_path, args, flag):
    proc = run_check(planted, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_backbone_fails_before_any_image_is_read(planted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="unknown backbone 'no_such_net'"):
        posetune.check_data(planted, label_issues=True, backbone="no_such_net")
    with pytest.raises(UsageError, match="--batch-size"):
        posetune.check_data(planted, label_issues=True, batch_size=0)
    assert list(tmp_path.iterdir()) == []


def test_manifest_exclude_column(tmp_path):
    root = write_shapes(tmp_path / "d", 3)
    paths = sorted(root.rglob("*.jpg"))
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "exclude"])
        for i, p in enumerate(paths):
            w.writerow([p, p.parent.name, "1" if i == 0 else ("no" if i == 1 else "")])
    index = discover(tmp_path / "m.csv", val_fraction=0.0)
    assert len(index.samples) == len(paths) - 1 and index.skipped[0][0] == str(paths[0])
    (tmp_path / "bad.csv").write_text(f"path,label,exclude\n{paths[0]},circle,maybe\n")
    with pytest.raises(UsageError, match="exclude must be"):
        discover(tmp_path / "bad.csv")


def test_out_of_fold_probabilities_never_see_their_row():
    from posetune.label_issues import out_of_fold_probabilities

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    x = rng.normal(size=(36, 4)) + 4 * np.eye(3, 4)[y]
    y_noisy = y.copy()
    y_noisy[0] = 1  # a row whose label contradicts its features: its own fit would have memorised it
    p, c = out_of_fold_probabilities(x, y_noisy, folds=4)
    assert p.shape == (36, 3) and np.allclose(p.sum(1), 1) and c in (0.001, 0.01, 0.1)
    assert p[0].argmax() == 0 and p[0, 1] < 0.5


@pytest.fixture(scope="module")
def rendered_poses(tmp_path_factory) -> Path:
    """Three rendered poses at 128 px (BlazePose finds most figures at this size), with a landmark cache of the
    module's own."""
    from posetune.data.synth import render_dataset

    root = tmp_path_factory.mktemp("poses") / "data"
    render_dataset(root, poses=["plank", "tree", "goddess"], per_class=10, test_per_class=4, size=128)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSETUNE_CACHE", str(tmp_path_factory.mktemp("pose-cache")))
        yield root


@pytest.mark.parametrize("backbone", ["pose", "test_efficientnet+pose@random"])
def test_label_issues_with_a_pose_spec(rendered_poses, tmp_path, backbone):
    """`pose` judges images by their landmark features alone (which tell the poses apart: out-of-fold accuracy
    well above chance), `NAME+pose` by [pooled | landmark] features; both judge every image."""
    report = posetune.check_data(rendered_poses, label_issues=True, backbone=backbone, image_size=64,
                                 contact_sheet=str(tmp_path / "sheet.png"))
    result = report["label_issues"]
    assert result["backbone"] == backbone and result["images"] == 42 and result["classes"] == ["goddess", "plank",
                                                                                                 "tree"]
    assert all(r["given"] in result["classes"] for r in result["issues"])
    if backbone == "pose":
        assert result["oof_accuracy"] > 0.5  # chance is 1/3
