"""A hostile new user: bad invocations of every command, each a clear exit code and message, no traceback,
and nothing written or changed outside what the command owns. The bad option *values* are in
test_options.py (BAD_OPTIONS); this table holds the other classes: usage errors, missing or wrong files,
folders posetune did not create, misuse of --resume, damaged runs, data it cannot learn from."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import write_shapes

from posetune import cli

# (command line with placeholders, exit code, what stderr must say (case-insensitive), usage error?)
# Placeholders: DATA (Kaggle layout), RUN (a trained run, no model.onnx), DAMAGED (its weights are garbage),
# IMG, MISSING, EMPTYDIR, USERDIR (a folder of the user's), FILE (a text file), OTHERDATA (other classes),
# NOCLASSES, ONECLASS, TINYCLASS, CFG:<name>.
HOSTILE = [
    # usage errors: typer's usage message, exit 2
    ("train DATA --epoch 3", 2, "no such option", True),
    ("trian DATA", 2, "no such command", True),
    ("evaluate RUN", 2, "missing argument", True),
    ("predict RUN", 2, "missing argument", True),
    ("export", 2, "missing argument", True),
    ("compare", 2, "missing argument", True),
    ("data bogus", 2, "no such command", True),
    ("train DATA --epochs two", 2, "invalid value", True),
    ("serve RUN --port eighty", 2, "invalid value", True),
    ("predict RUN IMG --top-k many", 2, "invalid value", True),
    # files that are not there or not what they should be
    ("train MISSING", 2, "missing", False),
    ("evaluate MISSING DATA", 2, "not found", False),
    ("evaluate RUN MISSING", 2, "missing", False),
    ("predict RUN MISSING", 2, "no such file", False),
    ("predict RUN EMPTYDIR", 2, "no images in", False),
    ("predict MISSING IMG", 2, "not found", False),
    ("export MISSING", 2, "not found", False),
    ("serve MISSING", 2, "not found", False),
    ("data check MISSING", 2, "missing", False),
    ("data check FILE", 2, "file.txt", False),
    ("train FILE", 2, "file.txt", False),
    ("train DATA --weights MISSING", 2, "missing", False),
    ("train DATA --weights FILE", 2, "file.txt", False),
    ("train DATA --config MISSING", 2, "missing", False),
    ("train DATA --config CFG:bad.yaml", 2, "yaml", False),
    ("train DATA --config CFG:list.yaml", 2, "list.yaml", False),
    ("train DATA --config CFG:unknown.yaml", 2, "unknown key", False),
    ("export RUN --images MISSING", 2, "missing", False),
    ("predict RUN IMG --engine onnx", 2, "export", False),
    ("predict DAMAGED IMG", 2, "damaged", False),
    ("evaluate DAMAGED DATA", 2, "damaged", False),
    ("export DAMAGED", 2, "damaged", False),
    # folders and runs posetune did not create, or must not replace
    ("train DATA --out RUN", 2, "--overwrite", False),
    ("train DATA --out USERDIR", 2, "not a posetune run", False),
    ("train DATA --out USERDIR --overwrite", 2, "not a posetune run", False),
    ("compare DATA --out USERDIR", 2, "not a posetune compare sweep", False),
    ("evaluate RUN DATA --out USERDIR", 2, "not a posetune evaluation", False),
    ("data synth USERDIR", 2, "did not write", False),
    ("demo --out USERDIR", 2, "not a posetune demo", False),
    # --resume misuse
    ("train --resume MISSING", 2, "config.yaml", False),
    ("train --resume USERDIR", 2, "config.yaml", False),
    ("train --resume RUN --epochs 5", 2, "drop --epochs", False),
    ("train DATA --resume RUN", 2, "drop data", False),
    # names and values only a registry or the model can check
    ("train DATA --backbone resnet_50", 2, "did you mean", False),
    ("backbones resnet_50", 2, "did you mean", False),
    ("compare DATA --backbones resnet_50", 2, "did you mean", False),
    ("train DATA --freeze-stages 99 --backbone test_efficientnet --no-pretrained", 2, "--freeze-stages", False),
    ("train DATA --device cuda --backbone test_efficientnet --no-pretrained", 2, "cuda", False),
    ("predict RUN IMG --device cuda", 2, "cuda", False),
    ("lr-find DATA --strategy bogus", 2, "--strategy", False),
    ("evaluate RUN OTHERDATA --split train", 2, "does not know", False),
    ("evaluate RUN DATA --split val", 2, "no 'val'", False),
    # data posetune cannot learn from
    ("train NOCLASSES", 2, "class folders", False),
    ("train ONECLASS --backbone test_efficientnet --no-pretrained", 2, "class", False),
    ("train TINYCLASS --backbone test_efficientnet --no-pretrained", 2, "image", False),
    ("compare DATA --val-fraction 0 --backbones test_efficientnet@random", 2, "--val-fraction 0.15", False),
    ("train DATA --val-fraction 0 --time-budget 1m", 2, "--val-fraction 0.15", False),
    ("train DATA --val-fraction 0 --refit --backbone test_efficientnet --no-pretrained", 2, "--val-fraction 0.15", False),
    ("train DATA --refit --time-budget 1m", 2, "drop refit", False),
    # the hub, offline here
    ("push RUN not/a/repo/id --dry-run", 2, "repo", False),
    ("push RUN you/yoga --token x", 2, "unreachable", False),
]


def test_the_table_is_broad():
    from test_options import BAD_OPTIONS

    assert len(HOSTILE) >= 50 and len(HOSTILE) + len(BAD_OPTIONS) >= 100
    commands = {line.split()[0] for line, *_ in HOSTILE}
    assert {"train", "evaluate", "predict", "export", "serve", "compare", "data", "demo", "backbones", "lr-find",
            "push"} <= commands


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in [root, *root.rglob("*")] if not p.is_symlink()}


@pytest.fixture(scope="module")
def world(tiny_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    data = write_shapes(root / "data", 6, seed=4, split="TRAIN")
    write_shapes(data, 2, seed=5, split="TEST")
    shutil.copytree(tiny_run, root / "run")
    shutil.copytree(tiny_run, root / "damaged")
    (root / "damaged" / "model.safetensors").write_bytes(b"\x00" * 64)
    (root / "emptydir").mkdir()
    (root / "emptydir" / "notes.txt").write_text("no images here")
    (root / "userdir").mkdir()
    (root / "userdir" / "thesis.txt").write_text("the user's own file")
    (root / "file.txt").write_text("a text file")
    other = root / "otherdata"
    for cls in ("dog", "cat"):
        (other / cls).mkdir(parents=True)
        for i, img in enumerate(sorted((data / "TRAIN" / "circle").glob("*.jpg"))[:2]):
            shutil.copy(img, other / cls / f"{i}.jpg")
    (root / "noclasses").mkdir()
    (root / "noclasses" / "loose.jpg").write_bytes((data / "TRAIN" / "circle" / "circle_000.jpg").read_bytes())
    shutil.copytree(data / "TRAIN" / "circle", root / "oneclass" / "circle")
    (root / "tinyclass" / "circle").mkdir(parents=True)
    shutil.copy(data / "TRAIN" / "circle" / "circle_000.jpg", root / "tinyclass" / "circle")
    shutil.copytree(data / "TRAIN" / "square", root / "tinyclass" / "square")
    (root / "bad.yaml").write_text("epochs: [1, 2\n")
    (root / "list.yaml").write_text("- epochs\n- 3\n")
    (root / "unknown.yaml").write_text("epochz: 3\n")
    return {"root": root, "DATA": data, "RUN": root / "run", "DAMAGED": root / "damaged",
            "IMG": next((data / "TEST").rglob("*.jpg")), "MISSING": root / "missing", "EMPTYDIR": root / "emptydir",
            "USERDIR": root / "userdir", "FILE": root / "file.txt", "OTHERDATA": other,
            "NOCLASSES": root / "noclasses", "ONECLASS": root / "oneclass", "TINYCLASS": root / "tinyclass"}


def expand(line: str, world: dict[str, Path]) -> list[str]:
    return [str(world["root"] / w[4:]) if w.startswith("CFG:") else str(world.get(w, w)) for w in line.split()]


@pytest.mark.parametrize("line, code, says, usage", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_invocation(line, code, says, usage, world, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where default outputs (runs/..., demo/) would appear
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the hub: a closed loopback port, answered at once
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = snapshot(world["root"])
    monkeypatch.setattr(sys, "argv", ["posetune", *expand(line, world)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == code, err
    assert "Traceback" not in err + out
    assert says.lower() in " ".join(err.lower().split()), err
    if not usage:
        assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert list(work.iterdir()) == [], "files left behind"
    assert snapshot(world["root"]) == before, "an input changed"


def test_files_posetune_cannot_read_are_skipped_with_a_reason_not_a_crash(shapes_kaggle, tmp_path, monkeypatch):
    """A dangling link, a decompression bomb, a folder named like an image: `data check` reports them (exit 1)."""
    from PIL import Image

    import posetune

    data = tmp_path / "data"
    shutil.copytree(shapes_kaggle / "TRAIN", data)
    (data / "circle" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)  # to make one: Pillow refuses even to create it
        Image.new("1", (15000, 15000)).save(data / "square" / "bomb.png")  # 225 MP in a few kB
    (data / "triangle" / "folder.jpg").mkdir()
    report = posetune.check_data(data)
    reasons = {Path(f["path"]).name: f["reason"] for f in report["unreadable"]}
    assert "bomb.png" in reasons and "pixels" in reasons["bomb.png"]
    assert "gone.jpg" in reasons
    result = posetune.train(data, out=str(tmp_path / "run"), epochs=1, backbone="test_efficientnet", pretrained=False,
                            image_size=64, batch_size=16)
    skipped = {Path(p).name for p, _ in result.skipped}
    assert {"bomb.png", "gone.jpg"} <= skipped
