"""Test helpers: tiny generated images (clean and messy) and the tiny model options."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
POSE_RUN_POSES = ("tree", "plank", "goddess")  # conftest.pose_run's classes, in a session's order
POSE_RUN_SIZE = 96
TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=64, batch_size=16)
# Run kinds that use landmarks -> the tiny backbone spec of conftest's calibrated_landmark_run (a new kind: one entry)
LANDMARK_BACKBONES = {"pose": "pose", "fusion": "test_efficientnet+pose@random"}
# Every kind of run -> the conftest fixture of its calibrated (temperature 0.25), ONNX-exported run
CALIBRATED_RUNS = {"image": "calibrated_run", "pose": "calibrated_pose_run", "fusion": "calibrated_fusion_run"}


def shape_image(kind: str, rng: np.random.Generator, size: int = 72) -> Image.Image:
    """A learnable toy image: one shape class per folder, random colours and position."""
    bg = tuple(int(v) for v in rng.integers(0, 120, 3))
    fg = tuple(int(v) for v in rng.integers(140, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return img


def write_shapes(root: Path, per_class: int, seed: int = 0, split: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        folder = root / split / c if split else root / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(c, rng).save(folder / f"{c}_{i:03d}.jpg", quality=90)
    return root


def messy_files(folder: Path, rng: np.random.Generator) -> dict[str, str]:
    """Write the kinds of files real photo folders contain; returns {name: what it is}."""
    folder.mkdir(parents=True, exist_ok=True)
    base = shape_image("circle", rng, 80)
    kinds = {}
    # EXIF-rotated JPEG: stored 80x40, orientation 6 means display rotated 90 degrees.
    wide = base.resize((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(folder / "rotated.JPG", exif=exif.tobytes())
    kinds["rotated.JPG"] = "exif"
    base.convert("CMYK").save(folder / "cmyk.jpeg")
    kinds["cmyk.jpeg"] = "cmyk"
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(folder / "sixteen.png")
    kinds["sixteen.png"] = "16-bit"
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.PNG")
    kinds["alpha.PNG"] = "rgba"
    base.convert("P").save(folder / "palette.gif")
    kinds["palette.gif"] = "palette"
    base.convert("L").save(folder / "gray.webp")
    kinds["gray.webp"] = "gray"
    base.save(folder / "plain.bmp")
    kinds["plain.bmp"] = "bmp"
    base.save(folder / "tiff.TIF")
    kinds["tiff.TIF"] = "tiff"
    (folder / "zero.jpg").write_bytes(b"")
    kinds["zero.jpg"] = "zero"
    buf = io.BytesIO()
    base.save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    kinds["truncated.jpg"] = "truncated"
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    kinds["corrupt.png"] = "corrupt"
    (folder / "notes.txt").write_text("not an image")
    kinds["notes.txt"] = "text"
    (folder / ".hidden.jpg").write_bytes(b"junk")
    kinds[".hidden.jpg"] = "hidden"
    return kinds


def run_cli(monkeypatch, capsys, args) -> tuple[int, str, str]:
    """posetune.cli.main in-process (no interpreter start-up): (exit code, stdout, stderr)."""
    import pytest

    from posetune import cli

    monkeypatch.setattr(sys, "argv", ["posetune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server started by a test; kill it if it does not leave within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
