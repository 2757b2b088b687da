"""The training's batch producer: batches made in a thread are the batches made in turn; the thread stays
bounded, hands its errors over, and is gone after the epoch, an exception or Ctrl-C."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers import TINY

from posetune.data.prefetch import BatchProducer


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "posetune-batches"]


def test_producer_keeps_order_and_stays_at_most_two_ahead():
    made = []

    def prepare(i):
        made.append(i)
        return i * 10

    got = []
    with BatchProducer(range(20), prepare, ahead=1) as batches:
        for value in batches:
            time.sleep(0.01)  # a slow consumer: the producer must wait, not run ahead
            assert len(made) - (len(got) + 1) <= 2  # one in the queue and one being made
            got.append(value)
    assert got == [i * 10 for i in range(20)]
    assert producer_threads() == []


def test_producer_error_reaches_the_consumer_and_the_thread_ends():
    def prepare(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        with BatchProducer(range(10), prepare) as batches:
            got.extend(batches)
    assert got == [0, 1, 2]
    assert producer_threads() == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_consumer_stopping_mid_stream_joins_the_thread(exc):
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1, which the thread sets (make test's workers run torch on one thread each)
    try:
        with pytest.raises(exc):
            with BatchProducer(iter(range(10_000)), lambda i: torch.ones(4) * i) as batches:
                for value in batches:
                    if value[0] == 5:
                        raise exc()
        assert producer_threads() == []
        assert torch.get_num_threads() == 2  # the thread's single-core setting is put back
    finally:
        torch.set_num_threads(threads_before)


def tiny_trainer(tmp_path, shapes_kaggle):
    from posetune.console import Reporter
    from posetune.options import TrainOptions
    from posetune.training.loop import Trainer
    from posetune.training.prepare import prepare

    opts = TrainOptions(data=str(shapes_kaggle), out=str(tmp_path / "run"), strategy="full", epochs=2, seed=5,
                        **{**TINY, "image_size": 32, "batch_size": 8})
    p = prepare(opts, Reporter(), write_config=False, create=False)
    loader = p.train_loader()
    return p, loader, Trainer(p.model, p.stages, p.plan, p.preprocess, p.settings, p.device, len(loader))


def test_same_seed_same_batches_with_or_without_the_thread_and_from_any_step(tmp_path, shapes_kaggle, monkeypatch):
    """The stream depends on (seed, epoch, step) only: the thread, the main thread, and a resumed run that
    starts at step k all make the same normalised batches."""
    from posetune.training.loop import seed_epoch

    p, loader, trainer = tiny_trainer(tmp_path, shapes_kaggle)
    color = p.train_ds.augment.batch_color

    def epoch_batches(start: int, prefetch: str):
        monkeypatch.setenv("POSETUNE_PREFETCH", prefetch)
        seed = seed_epoch(loader, 1, 5)  # as train_epoch does: the epoch's order and seed
        with trainer.batches(loader, seed, start, color) as batches:
            return [(step, inputs[0].clone(), y.clone()) for step, inputs, y in batches]

    threaded, inline, resumed = epoch_batches(0, "1"), epoch_batches(0, "0"), epoch_batches(2, "1")
    assert [s for s, _, _ in threaded] == list(range(len(loader))) and len(loader) >= 3
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(threaded, inline))
    assert [s for s, _, _ in resumed] == list(range(2, len(loader)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(threaded[2:], resumed))
    assert threaded[1][1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(threaded[0][1], epoch_batches(0, "1")[0][1])
    assert producer_threads() == []


def test_training_with_the_thread_equals_training_without(tmp_path, shapes_kaggle, monkeypatch):
    from posetune.training.loop import LoopState

    weights = []
    for prefetch in ("1", "0"):
        monkeypatch.setenv("POSETUNE_PREFETCH", prefetch)
        p, loader, trainer = tiny_trainer(tmp_path, shapes_kaggle)
        rows = [trainer.train_epoch(e, loader, LoopState(), p.train_ds.augment.batch_color) for e in (1, 2)]
        weights.append(({k: v.clone() for k, v in p.model.state_dict().items()}, [r["train_loss"] for r in rows]))
    (a, loss_a), (b, loss_b) = weights
    assert loss_a == loss_b
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert producer_threads() == []


def test_pose_batches_mirror_the_landmarks_exactly_where_the_pixels_flip():
    """PoseDataset in seeded batches: the same crops as the images' own dataset, and the mirrored features
    for exactly the images that came out flipped (a left-to-right ramp tells which)."""
    from posetune.data.pipeline import DecodedDataset, Preprocess, TrainAugment, crop_seed
    from posetune.training.pose_inputs import PoseDataset

    ramp = torch.arange(60, dtype=torch.uint8).mul(4).expand(3, 48, 60).contiguous()  # brighter to the right
    pre = Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    base = DecodedDataset([ramp] * 16, [0] * 16, pre, TrainAugment(32))
    plain, mirrored = torch.zeros(16, 4), torch.ones(16, 4)
    pose = PoseDataset(base, plain, mirrored, augment=True)
    items = [(i, crop_seed(77, 3)) for i in range(16)]
    with_pose, images_only = pose.__getitems__(items), base.__getitems__(items)
    flips = []
    for ((img, feats), _), (same_img, _) in zip(with_pose, images_only):
        assert torch.equal(img, same_img)
        flipped = int(img[0, 0, 0]) > int(img[0, 0, -1])
        assert torch.equal(feats, mirrored[0] if flipped else plain[0])
        flips.append(flipped)
    assert 0 < sum(flips) < 16  # both kinds drawn
