"""DATA -> samples (path, label, split): class folders, split folders, CSV manifests, Yoga-82 lists.

>>> index = discover("DATASET")          # doctest: +SKIP  (Kaggle: DATASET/TRAIN/<pose>, DATASET/TEST/<pose>)
>>> index.classes, index.counts()        # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posetune.data.images import is_image_path
from posetune.errors import UsageError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
MIN_IMAGES_PER_CLASS = 2
FEW_IMAGES_WARNING = 5


@dataclass
class Sample:
    path: str
    label: int
    split: str  # train | val | test


@dataclass
class DataIndex:
    """Everything discovered about DATA: classes in index order, samples, and what was left out."""

    root: str
    layout: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # only filled when discover(strict=False)
    val_held_out: bool = False

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for s in self.samples:
            table.setdefault(s.split, {c: 0 for c in self.classes})[self.classes[s.label]] += 1
        return table

    def require_val(self, flag: str, uses: str) -> None:
        """Stop with the fix when a command that ``uses`` val (e.g. "ranks backbones on") finds none."""
        if not self.split("val"):
            raise UsageError(f"{flag} {uses} a val split, and {self.root} has none with --val-fraction 0; "
                             "give --val-fraction 0.15 (the default) or a val/ folder")

    def with_val_in_train(self) -> DataIndex:
        """The same samples with val's moved into train (`train --refit`'s final run)."""
        return dataclasses.replace(self, samples=[dataclasses.replace(s, split="train") if s.split == "val" else s
                                                  for s in self.samples])

    def drop(self, bad: dict[str, str]) -> None:
        """Remove samples whose path is in ``bad`` (path -> reason), recording them as skipped."""
        if not bad:
            return
        self.samples = [s for s in self.samples if s.path not in bad]
        self.skipped.extend(bad.items())


def discover(data: str | Path, val_fraction: float = 0.15, seed: int = 0, label_level: int = 6,
             strict: bool = True) -> DataIndex:
    """Find the samples of DATA in whichever layout it uses; hold out a stratified val split if none.

    ``strict=False`` (the audit) records class problems in ``index.problems`` instead of failing.
    """
    root = Path(data)
    if not root.exists():
        raise UsageError(f"DATA not found: {root} (give a folder of class folders, split folders, or a CSV)")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise UsageError(f"{root} is a file but not a .csv manifest (columns path,label[,split])")
        index = _from_csv(root)
    elif (root / "yoga_train.txt").is_file():
        index = _from_yoga82(root, label_level)
    else:
        split_dirs = {SPLIT_NAMES[p.name.lower()]: p for p in _subdirs(root) if p.name.lower() in SPLIT_NAMES}
        index = _from_split_folders(root, split_dirs, strict) if split_dirs else _from_class_folders(root)
    if strict:
        _check_classes(index)
    if not index.split("val") and index.split("train") and val_fraction > 0:
        hold_out_val(index, val_fraction, seed)
    return index


def _subdirs(path: Path) -> list[Path]:
    """Visible sub-folders. A link is followed once, unless it points back at DATA or above it, or into
    DATA (a loop, or a second copy of a folder that is scanned anyway)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                  and not _link_into_tree(p))


def _link_into_tree(p: Path) -> bool:
    if not p.is_symlink():
        return False
    target, here = p.resolve(), p.parent.resolve()
    return target == here or target in here.parents or here in target.parents


def _scan_class_dir(class_dir: Path, skipped: list) -> list[str]:
    paths = []
    for p in sorted(class_dir.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(class_dir).parts):
            continue  # hidden files and folders are not data
        if p.is_symlink() and not p.exists():
            skipped.append((str(p), "a link to a file that does not exist"))
            continue
        if not p.is_file():
            continue
        if is_image_path(p):
            paths.append(str(p))
        else:
            skipped.append((str(p), "not an image file (extension)"))
    return paths


def _from_class_folders(root: Path) -> DataIndex:
    skipped: list = []
    per_class = {d.name: _scan_class_dir(d, skipped) for d in _subdirs(root)}
    if not per_class:
        raise UsageError(f"{root} has no class folders; expected {root}/<class>/*.jpg or {root}/TRAIN/<class>/...")
    classes = sorted(per_class)
    samples = [Sample(p, classes.index(c), "train") for c in classes for p in per_class[c]]
    return DataIndex(str(root), "class-folders", classes, samples, skipped)


def _from_split_folders(root: Path, split_dirs: dict[str, Path], strict: bool = True) -> DataIndex:
    skipped: list = []
    per_split = {split: {d.name: _scan_class_dir(d, skipped) for d in _subdirs(path)}
                 for split, path in split_dirs.items()}
    if "train" not in per_split:
        raise UsageError(f"{root} has split folders ({', '.join(p.name for p in split_dirs.values())}) "
                         "but no train folder; add TRAIN/<class>/...")
    classes = sorted(per_split["train"])
    warnings, problems = [], []
    for split, per_class in per_split.items():
        extra = sorted(set(per_class) - set(per_split["train"]))
        missing = sorted(set(per_split["train"]) - set(per_class))
        if extra:
            msg = f"class folders in {split_dirs[split].name} but not in the train split: {', '.join(extra)}"
            if strict:
                raise UsageError(f"{msg}; add them to train or remove them")
            problems.append(msg)
            classes = sorted(set(classes) | set(extra))
        if missing:
            msg = f"classes with no {split_dirs[split].name} folder: {', '.join(missing)}"
            (warnings if strict else problems).append(msg)
    samples = [Sample(p, classes.index(c), split)
               for split, per_class in per_split.items() for c, paths in per_class.items() for p in paths]
    return DataIndex(str(root), "split-folders", classes, samples, skipped, warnings, problems)


EXCLUDED = "excluded by the manifest (exclude column)"  # the skipped reason of such a row: not a bad file
EXCLUDE_VALUES = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def _from_csv(path: Path) -> DataIndex:
    """path,label[,split][,exclude]: a row whose ``exclude`` is 1 / true / yes is left out (and recorded as
    skipped), so a manifest can mark removals without losing the rows (``data check --fix-manifest``)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UsageError(f"{path}: a manifest needs a header with columns path,label[,split]")
    excluded = []
    for r in rows:
        value = (r.get("exclude") or "").strip().lower()
        if value not in EXCLUDE_VALUES:
            raise UsageError(f"{path}: exclude must be 1 or 0 (true/false, yes/no), not '{r.get('exclude')}' "
                             f"for {r['path']}")
        excluded.append(EXCLUDE_VALUES[value])
    classes = sorted({r["label"] for r, out in zip(rows, excluded) if not out})
    samples, skipped = [], []
    for r, out in zip(rows, excluded):
        p = Path(r["path"])
        p = p if p.is_absolute() else path.parent / p
        if out:
            skipped.append((str(p), EXCLUDED))
            continue
        split = SPLIT_NAMES.get((r.get("split") or "train").strip().lower())
        if split is None:
            raise UsageError(f"{path}: unknown split '{r.get('split')}' for {r['path']}; use train, val or test")
        if not p.is_file():
            skipped.append((str(p), "missing file (listed in the manifest)"))
            continue
        samples.append(Sample(str(p), classes.index(r["label"]), split))
    return DataIndex(str(path), "csv", classes, samples, skipped)


def _from_yoga82(root: Path, label_level: int) -> DataIndex:
    """Yoga-82 split lists: lines 'path,label6,label20,label82', images in a folder beside them."""
    column = {6: 1, 20: 2, 82: 3}.get(label_level)
    if column is None:
        raise UsageError(f"--label-level must be 6, 20 or 82, not {label_level}")
    image_root = next((root / d for d in ("images", "Images", "yoga_dataset_links", "dataset")
                       if (root / d).is_dir()), root)
    raw: list[tuple[str, str, str]] = []
    for split, fname in (("train", "yoga_train.txt"), ("test", "yoga_test.txt")):
        if not (root / fname).is_file():
            continue
        for line in (root / fname).read_text().splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) >= 4:
                raw.append((parts[0], parts[column], split))
    classes_ids = sorted({int(r[1]) for r in raw})
    names = _yoga82_class_names(root, label_level, raw)
    samples, skipped = [], []
    for rel, label, split in raw:
        p = image_root / rel
        if not p.is_file():
            skipped.append((str(p), "missing file (listed in the Yoga-82 split, probably a dead URL)"))
            continue
        samples.append(Sample(str(p), classes_ids.index(int(label)), split))
    classes = [names.get(i, f"class{i}") for i in classes_ids]
    index = DataIndex(str(root), f"yoga82-{label_level}", classes, samples, skipped)
    missing = sum(1 for _, r in skipped if r.startswith("missing"))
    if missing:
        index.warnings.append(f"{missing} images listed in the Yoga-82 splits are missing and were skipped")
    return index


def _yoga82_class_names(root: Path, label_level: int, raw: list[tuple[str, str, str]]) -> dict[int, str]:
    """Class names: the 82-level name is the image's folder; coarser levels name their first member
    unless a names file (``classes_<level>.txt``, one name per line) is beside the lists."""
    names_file = root / f"classes_{label_level}.txt"
    if names_file.is_file():
        return dict(enumerate(n.strip() for n in names_file.read_text().splitlines() if n.strip()))
    names: dict[int, list[str]] = {}
    for rel, label, _ in raw:
        folder = Path(rel).parent.name or Path(rel).stem
        names.setdefault(int(label), [])
        if folder not in names[int(label)]:
            names[int(label)].append(folder)
    if label_level == 82:
        return {k: v[0] for k, v in names.items()}
    return {k: f"{v[0]}+{len(v) - 1}" if len(v) > 1 else v[0] for k, v in names.items()}


def _check_classes(index: DataIndex) -> None:
    train = Counter(s.label for s in index.samples if s.split == "train")
    empty = [c for i, c in enumerate(index.classes) if train[i] == 0]
    if len(empty) == len(index.classes):
        raise UsageError(f"no images found under {index.root} (looked for {', '.join(sorted({'.jpg', '.png'}))} "
                         "and other image files in class folders)")
    if empty:
        index.warnings.append(f"classes with no training images were dropped: {', '.join(empty)}")
        keep = [i for i, c in enumerate(index.classes) if c not in empty]
        remap = {old: new for new, old in enumerate(keep)}
        index.samples = [Sample(s.path, remap[s.label], s.split) for s in index.samples if s.label in remap]
        index.classes = [index.classes[i] for i in keep]
        train = Counter(s.label for s in index.samples if s.split == "train")
    few = [f"{c} ({train[i]})" for i, c in enumerate(index.classes) if train[i] < MIN_IMAGES_PER_CLASS]
    if few:
        raise UsageError(f"classes with fewer than {MIN_IMAGES_PER_CLASS} training images: {', '.join(few)}; "
                         "add images or remove the folders")
    if len(index.classes) < 2:
        raise UsageError(f"only one class found ({index.classes[0]}); a classifier needs at least two class folders")
    low = [f"{c} ({train[i]})" for i, c in enumerate(index.classes) if train[i] < FEW_IMAGES_WARNING]
    if low:
        index.warnings.append(f"classes with very few training images: {', '.join(low)}")


def hold_out_val(index: DataIndex, val_fraction: float, seed: int) -> None:
    """Move a stratified ``val_fraction`` of train to val (at least one per class when it has >= 2)."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(index.samples):
        if s.split == "train":
            by_class.setdefault(s.label, []).append(i)
    for members in by_class.values():
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        for i in rng.permutation(members)[:n_val]:
            index.samples[i].split = "val"
    index.val_held_out = True
