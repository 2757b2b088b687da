"""A whole dataset on disk in the Kaggle layout, one independently seeded image at a time, plus a preview sheet."""

from __future__ import annotations

import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from posetune.checks import SEED, Bool, Int, InvalidOption, Names, Options, OutputPath, option
from posetune.data.synth.poses import KAGGLE_POSES, POSES
from posetune.data.synth.render import MIN_SIZE, render_pose

_SPLITS = {"TRAIN": 0, "TEST": 1}
MAX_SIZE = 1024  # px; each image is drawn on a 2x canvas first
MAX_PER_CLASS = 100_000


@dataclass
class SynthOptions(Options):
    """Every option of `posetune data synth` (same names as the flags). ``poses`` None: the 5 Kaggle poses."""

    out: str = option("", OutputPath(folder=True), flag="OUT")
    poses: list[str] | None = option(None, Names("tree,plank,downdog", unique=True))
    per_class: int = option(60, Int(0, MAX_PER_CLASS))
    test_per_class: int = option(20, Int(0, MAX_PER_CLASS))
    size: int = option(224, Int(MIN_SIZE, MAX_SIZE))
    seed: int = option(0, Int(*SEED))
    masks: bool = option(False, Bool())  # also OUT/masks/<split>/<pose>/<name>.png: where the figure is
    shift: bool = option(False, Bool())  # the same figures (same seed) on an unseen domain: robustness tests

    def check_together(self, label) -> None:
        unknown = [p for p in self.poses or [] if p not in POSES]
        if unknown:
            raise InvalidOption(f"{label('poses')} has unknown pose(s) {', '.join(unknown)}; valid poses: {', '.join(POSES)}")

    @property
    def pose_names(self) -> list[str]:
        return list(KAGGLE_POSES if self.poses is None else self.poses)


def _image_rng(seed: int, split: str, pose: str, index: int) -> np.random.Generator:
    # crc32 (not hash()) so seeds are stable across processes and independent of the pose list
    return np.random.default_rng([seed, _SPLITS[split], zlib.crc32(pose.encode()), index])


def _label_font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError, ImportError):  # old Pillow / no FreeType
        return ImageFont.load_default()


def _contact_sheet(rows: list[tuple[str, list[Image.Image]]], thumb: int) -> Image.Image:
    cols = max((len(ims) for _, ims in rows), default=0)
    label_w, gap = max(110, thumb), 4
    sheet = Image.new("RGB", (label_w + cols * (thumb + gap) + gap, len(rows) * (thumb + gap) + gap),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _label_font(max(12, thumb // 7))
    for r, (name, ims) in enumerate(rows):
        y = gap + r * (thumb + gap)
        draw.text((8, y + thumb // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
        for c, im in enumerate(ims):
            sheet.paste(im.resize((thumb, thumb), Image.BILINEAR), (label_w + gap + c * (thumb + gap), y))
    return sheet


MARKER = ".posetune-synth"  # in OUT: a folder `data synth` rendered, which a rerun may render again
MASKS = "masks"  # in OUT: the figure mask of each image, as mask_path() names it
OWN_ENTRIES = {"TRAIN", "TEST", "preview.jpg", MARKER, MASKS}


def mask_path(root: str | Path, image: str | Path) -> Path:
    """Where `data synth --masks` writes the figure mask of ``image`` (a file under DATA ``root``):
    ROOT/masks/<split>/<pose>/<name>.png, 255 on the figure and 0 on the background.

    >>> mask_path("synth", "synth/TEST/tree/tree_00003.jpg").as_posix()
    'synth/masks/TEST/tree/tree_00003.png'
    """
    return Path(root) / MASKS / Path(image).relative_to(root).with_suffix(".png")


def has_masks(root: str | Path) -> bool:
    """Whether DATA ``root`` is a `data synth` render with figure masks (`--masks`)."""
    return (Path(root) / MARKER).is_file() and (Path(root) / MASKS).is_dir()


def claim_folder(root: Path) -> None:
    """Refuse an OUT that holds anything but an earlier render; mark OUT as a render before writing into it."""
    from posetune.errors import UsageError

    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        if {p.name for p in root.iterdir()} - OWN_ENTRIES:  # an earlier render (before the marker) is only these
            raise UsageError(f"{root} already holds files that `posetune data synth` did not write; give a new or "
                             "empty folder (posetune never writes into a folder it did not create)")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("rendered by posetune data synth; a rerun may replace the images it rendered\n")


def render_dataset(out: str | Path, progress: Callable[[int, int], None] | None = None, **options) -> dict:
    """Write ``out/TRAIN/<pose>/<pose>_00000.jpg``, ``out/TEST/<pose>/...`` and ``out/preview.jpg``; with
    ``masks=True`` also each image's figure mask (:func:`mask_path`; the images are the same bytes either way).

    Options as :class:`SynthOptions` (a bad one raises InvalidOption, a ValueError, before anything is
    written). Each image is seeded from (seed, split, pose, index), so the same arguments give the same
    bytes and an image does not depend on how many others are rendered. OUT must be new, empty or an earlier
    render; there, stale ``<pose>_NNNNN.jpg`` files beyond the requested counts are removed; nothing else is
    touched.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     info = render_dataset(tmp, poses=["tree", "plank"], per_class=2, test_per_class=1, size=64)
    >>> info["train"], info["test"], info["poses"]
    (4, 2, ['tree', 'plank'])
    """
    opts = SynthOptions.build("posetune.synth", out=out, **options)
    out, names, per_class, test_per_class, size, seed = (opts.out, opts.pose_names, opts.per_class,
                                                         opts.test_per_class, opts.size, opts.seed)

    root = Path(out)
    claim_folder(root)
    if (root / MASKS).is_dir():  # an earlier render's masks would not match the images rendered now
        shutil.rmtree(root / MASKS)
    total = len(names) * (per_class + test_per_class)
    done, n_cols = 0, 8
    examples: dict[str, list[Image.Image]] = {n: [] for n in names}
    pattern = re.compile(r"^(.+)_(\d{5})\.jpg$")
    for split, count in (("TRAIN", per_class), ("TEST", test_per_class)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob(f"{name}_*.jpg"):  # leftovers of a bigger earlier render
                m = pattern.match(old.name)
                if m and m.group(1) == name and int(m.group(2)) >= count:
                    old.unlink()
            for i in range(count):
                rng = _image_rng(seed, split, name, i)
                img, mask = render_pose(name, rng, size, with_mask=True, shifted=opts.shift)
                path = folder / f"{name}_{i:05d}.jpg"
                img.save(path, "JPEG", quality=int(rng.integers(60, 96)))
                if opts.masks:
                    target = mask_path(root, path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    mask.save(target, "PNG")
                if len(examples[name]) < n_cols:
                    examples[name].append(img)
                done += 1
                if progress is not None:
                    progress(done, total)
    preview = root / "preview.jpg"
    _contact_sheet([(n, examples[n]) for n in names], min(size, 112)).save(preview, "JPEG", quality=90)
    info = {"out": str(root), "poses": names, "train": len(names) * per_class,
            "test": len(names) * test_per_class, "preview": str(preview)}
    if opts.masks:
        info["masks"] = str(root / MASKS)
    return info
