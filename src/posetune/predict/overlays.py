"""`predict --overlay DIR`: each image with its skeleton drawn (pose and fusion runs) and its answer written on it.

Files are DIR/<stem>.png, in input order; a stem that repeats gets -2, -3, ... (the second a/x.jpg, b/x.jpg is
x-2.png). A file that already exists in DIR is refused before anything is predicted (one line, exit 2): a -N
suffix there would leave overlays of two runs side by side with nothing to tell them apart, and overwriting
would destroy what this run did not create.

>>> targets = overlay_targets(["a/x.jpg", "b/x.jpg"], "overlays")   # doctest: +SKIP
>>> [t.name for t in targets]                                       # doctest: +SKIP
['x.png', 'x-2.png']
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, ImageDraw, ImageFont

from posetune.errors import UsageError
from posetune.predict.prediction import Prediction

MAX_SIDE = 1280  # overlays are for looking at: a 12 MP photo is drawn at this longest side
MIN_SIDE = 256  # and a tiny image is enlarged to it, so that its caption fits
BOX, TEXT = (0, 0, 0), (255, 255, 255)


def overlay_targets(paths: Sequence[str], folder: str | Path) -> list[Path]:
    """The overlay file of each input, unique within this call; refuses any that exists already (UsageError)."""
    folder = Path(folder)
    seen: dict[str, int] = {}
    targets = []
    for path in paths:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        name = f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png"
        while name in {t.name for t in targets}:  # x-2.jpg given beside two x.jpg
            seen[stem] += 1
            name = f"{stem}-{seen[stem]}.png"
        targets.append(folder / name)
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(f"--overlay {folder}: {existing[0]} exists{more}; posetune never overwrites a file it did "
                         "not write in this run: choose an empty --overlay folder or move those files")
    return targets


def caption(prediction: Prediction) -> str:
    """'tree 0.93', 'unsure (best tree 0.41)' or 'no person detected'."""
    if prediction.no_person:
        return prediction.label
    if prediction.unsure and prediction.top_k:
        best, p = prediction.top_k[0]
        return f"{prediction.label} (best {best} {p:.2f})"
    return f"{prediction.label} {prediction.probability:.2f}"


def draw_overlay(image: Image.Image, prediction: Prediction) -> Image.Image:
    """``image`` (longest side MIN_SIDE..MAX_SIDE px) with the skeleton of ``prediction`` drawn (when it has landmarks) and its
    caption in a box at the top left."""
    from posetune.pose.drawing import draw_skeleton

    image = image.convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    if max(image.size) < MIN_SIDE:
        scale = MIN_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.NEAREST)
    out = draw_skeleton(image, prediction.landmarks if prediction.pose_detected else None)
    draw = ImageDraw.Draw(out)
    size = max(10, round(min(out.size) / 18))
    font = ImageFont.load_default(size=size)
    text = caption(prediction)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle([0, 0, right - left + 2 * pad, bottom - top + 2 * pad], fill=BOX)
    draw.text((pad - left, pad - top), text, fill=TEXT, font=font)
    return out


def write_overlays(predictions: Sequence[Prediction], targets: Sequence[Path],
                   on_step: Callable[[int], None] | None = None) -> list[str]:
    """Draw and write each readable prediction's overlay (``prediction.overlay`` set); the written paths."""
    from posetune.data.images import ImageError, load_image
    from posetune.io import atomic_write_bytes

    written = []
    for prediction, target in zip(predictions, targets):
        if prediction.error is None:
            try:
                image = load_image(prediction.path)
            except ImageError as exc:  # changed on disk since it was predicted
                prediction.error = str(exc)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, _png(draw_overlay(image, prediction)))
                prediction.overlay = str(target)
                written.append(str(target))
        if on_step:
            on_step(1)
    return written


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
