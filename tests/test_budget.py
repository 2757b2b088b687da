"""`posetune train --time-budget`: the plan from measured numbers, the epoch loop's guard, the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest
from helpers import TINY, run_cli

from posetune.checks import Duration
from posetune.comparison import budget as budget_module
from posetune.comparison.budget import (
    GOOD_EPOCHS,
    MIN_EPOCHS,
    MORE_EPOCHS,
    Candidate,
    at_size,
    plan_budget,
    plan_with_timed_steps,
    refit_runs,
    scaled_size,
    selection_share,
    selection_times,
)
from posetune.errors import InvalidOption

COUNTS = {"n_train": 1000, "n_val": 150, "n_test": 500}
# lite2 probes best but is the slowest; lite0 is the fastest (forward images/s at each one's pretrained size)
MEASURED = [Candidate("efficientnet_lite2", 0.90, 40.0, 260), Candidate("efficientnet_lite1", 0.88, 70.0, 240),
            Candidate("efficientnet_lite0", 0.85, 100.0, 224)]


def plan(seconds: float):
    return plan_budget(MEASURED, COUNTS, seconds, default_epochs=10)


def test_plenty_of_time_trains_the_best_probe_at_its_size_for_more_than_the_default_epochs():
    # lite2 alone (the others' refits would fit): 20 epochs once (~1596 s), not 10 twice
    choice = plan_budget(MEASURED[:1], COUNTS, 1600, default_epochs=10)
    assert (choice.backbone, choice.strategy, choice.image_size, choice.epochs, choice.refit) == (
        "efficientnet_lite2", "partial", 260, 10 * MORE_EPOCHS, False)
    assert choice.estimated_seconds <= 1600
    assert [r for r in choice.rows if r["chosen"]] == [r for r in choice.rows if r["backbone"] == "efficientnet_lite2"
                                                       and r["image size"] == 260 and r["strategy"] == "partial"]


def test_time_for_two_runs_of_the_default_epochs_plans_a_refit_at_the_largest_size():
    choice = plan(3600)  # lite2: (3 x 1000 + 150) / 40 + 3 x 1150 / 40 = 165 s per epoch of both runs
    assert (choice.backbone, choice.image_size, choice.epochs, choice.refit) == ("efficientnet_lite2", 260,
                                                                                 10 * MORE_EPOCHS, True)
    assert choice.estimated_seconds <= 3600 and "train + val" in choice.reason
    single = [r for r in choice.rows if r["backbone"] == "efficientnet_lite2" and r["image size"] == 260
              and not r["refit"] and r["strategy"] == "partial"][0]
    assert single["fits"] and single["estimated s"] < choice.estimated_seconds / 1.8  # the refit: about twice
    # a refit of a faster backbone comes before one run of the best-probing one at the same (largest) share of its
    # size: on Fashion-MNIST-1k lite0's refit scored 0.877, one run of lite1 at 240 px 0.872
    middle = plan(800)
    assert (middle.backbone, middle.image_size, middle.refit) == ("efficientnet_lite0", 224, True)
    assert middle.epochs >= 10 and middle.estimated_seconds <= 800
    assert any(r["backbone"] == "efficientnet_lite2" and r["image size"] == 260 and r["fits"] and not r["refit"]
               for r in middle.rows)
    # refit rows are listed only when both runs fit the default epochs; a smaller size's refit does not come before
    # one run at a larger size
    tight = plan(450)
    assert not [r for r in tight.rows if r["refit"] and r["image size"] in (260, 240, 224)] and not tight.refit
    for rows in (tight.rows, middle.rows):
        refits = [r for r in rows if r["refit"]]
        assert refits and all(r["epochs"] >= 10 and r["fits"] for r in refits)


def test_a_refit_splits_its_epoch_time_between_the_selection_and_the_train_plus_val_run():
    share = selection_share(COUNTS, {"images_per_s": 100.0})
    # selection: 3 x 1000 + 150 forwards per epoch; final run: 3 x 1150
    assert share == pytest.approx(3150 / (3150 + 3450))
    assert [sum(n.values()) for n in refit_runs(COUNTS)] == [1150, 1650]
    # with a timed training step (50 train images/s): 1000 / 50 + 150 / 100 s against 1150 / 50 s
    assert selection_share(COUNTS, {"images_per_s": 100.0, "train_images_per_s": 50.0}) == pytest.approx(
        21.5 / (21.5 + 23))


def test_a_timed_training_step_replaces_the_three_forwards_guess():
    guessed = Candidate("efficientnet_lite0", 0.85, 100.0, 224)
    timed = dataclasses.replace(guessed, train_images_per_s=60.0)  # faster than 100 / 3 forwards
    slow, fast = (plan_budget([c], COUNTS, 300, default_epochs=10) for c in (guessed, timed))

    def at_224(choice) -> dict:
        return [r for r in choice.rows if r["image size"] == 224 and not r["refit"] and r["strategy"] == "partial"][0]

    assert at_224(fast)["epochs"] > at_224(slow)["epochs"] and fast.estimated_seconds <= 300
    # per epoch: 1000 train images at 60/s and 150 val images at 100/s (at 224 px, the measured size)
    row = at_224(fast)
    fixed = (150 + 500) / 100 + budget_module.RESERVE_S
    assert row["estimated s"] == pytest.approx(fixed + row["epochs"] * (1000 / 60 + 150 / 100), abs=0.1)
    assert at_size(timed, 112, train=True) == pytest.approx(240.0) and at_size(guessed, 112, train=True) is None


def test_the_training_step_is_timed_again_at_the_size_the_plan_chose_and_the_plan_made_again():
    # Fashion-MNIST-1k --time-budget 5m on a 2-core CPU: lite0's step at 224 px 23.5 img/s; at 112 px it ran at 67,
    # not the 94 the pixels say
    counts = {"n_train": 850, "n_val": 150, "n_test": 10_000}
    lite0 = Candidate("efficientnet_lite0", 0.81, 60.0, 224, train_images_per_s=23.5)
    timed = []

    def time_step(c: Candidate, size: int) -> float:
        timed.append((c.backbone, size))
        return 0.71 * at_size(c, size, train=True)

    scaled = plan_budget([dataclasses.replace(lite0)], counts, 245, default_epochs=10)
    choice = plan_with_timed_steps([lite0], counts, lambda: 245, 10, 0.0, time_step)
    assert (scaled.image_size, choice.image_size) == (112, 112) and timed == [("efficientnet_lite0", 112)]
    assert lite0.train_rates == {112: pytest.approx(0.71 * 94.0)}
    assert GOOD_EPOCHS <= choice.epochs < scaled.epochs and choice.estimated_seconds <= 245
    # the timed rate prices the 112 px rows; the 160 px rows still scale from 224 px, the nearer timed size
    assert at_size(lite0, 112, train=True) == pytest.approx(0.71 * 94.0)
    assert at_size(lite0, 160, train=True) == pytest.approx(23.5 * (224 / 160) ** 2)
    # a plan at the size already timed, or a step that cannot be timed (None), ends the rounds
    assert plan_with_timed_steps([lite0], counts, lambda: 245, 10, 0.0, time_step) == choice and len(timed) == 1
    untimed = Candidate("efficientnet_lite0", 0.81, 60.0, 224, train_images_per_s=23.5)
    assert plan_with_timed_steps([untimed], counts, lambda: 245, 10, 0.0, lambda c, s: None).epochs == scaled.epochs
    assert plan_with_timed_steps([untimed], counts, lambda: 2000, 10, 0.0, time_step).image_size == 224
    assert len(timed) == 1  # the pretrained size was timed by the probes


def test_the_selection_gets_its_share_of_the_epochs_time_after_both_decodes_and_its_val_scoring():
    deadline, target, val_s = selection_times(now=100.0, deadline=1100.0, target=1000.0, decode_s=20.0, val_s=3.0,
                                              share=0.5)
    fixed = 2 * 20.0 + 3.0 + budget_module.RESERVE_S  # both decodes, the selection's val pass and folder
    assert (deadline, target, val_s) == pytest.approx((120.0 + (1000.0 - fixed) / 2, 120.0 + (900.0 - fixed) / 2, 3.0))
    # what is left after the selection's target: its val and folder, the final run's decode and its epochs
    assert target + 3.0 + budget_module.RESERVE_S + 20.0 + (900.0 - fixed) / 2 == pytest.approx(1000.0)


def test_a_timed_training_step_leaves_the_global_rng_alone_and_skips_landmark_kinds():
    import torch

    from posetune.comparison.budget import _train_rate
    from posetune.comparison.costs import train_images_per_s
    from posetune.options import TrainOptions

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert train_images_per_s("test_efficientnet", 3, 64, 4, torch.device("cpu"), steps=1) > 0
    assert torch.equal(torch.rand(3), expected)
    opts = TrainOptions(batch_size=4)
    assert _train_rate("pose", 224, 3, opts, torch.device("cpu")) is None
    assert _train_rate("test_efficientnet@random", 64, 3, opts, torch.device("cpu")) > 0


def test_a_tighter_budget_keeps_the_size_and_takes_a_faster_backbone_then_a_smaller_size():
    # at their full sizes 10 epochs fit 450 s for neither lite2 (79 s per epoch: (3 x 1000 + 150) / 40; 5 fit)
    # nor lite1 (9 fit); lite0 fits 13 at its full 224 px
    choice = plan(450)
    assert (choice.backbone, choice.image_size) == ("efficientnet_lite0", 224)
    assert GOOD_EPOCHS <= choice.epochs < 20 and choice.estimated_seconds <= 450
    small = plan(60)  # no backbone fits 3 epochs at its full size: a smaller image size does
    assert small.strategy == "partial" and small.image_size < 260
    assert small.estimated_seconds <= 60


def test_enough_epochs_come_before_the_largest_size():
    # at 240 s lite1 fits 5 epochs at its full 240 px, the largest size that fits: the plan takes one of 10+
    choice = plan(240)
    full_size = [r for r in choice.rows if r["backbone"] == "efficientnet_lite1" and r["image size"] == 240
                 and r["strategy"] == "partial"][0]
    assert full_size["fits"] and MIN_EPOCHS <= full_size["epochs"] < GOOD_EPOCHS
    assert choice.image_size < 240 and choice.epochs >= GOOD_EPOCHS and choice.estimated_seconds <= 240
    assert f"{GOOD_EPOCHS}+ epochs" in choice.reason
    tight = plan(45)  # nothing fits 10 epochs: the most epochs that fit, at the largest size giving them
    assert MIN_EPOCHS <= tight.epochs < GOOD_EPOCHS and "most epochs" in tight.reason


def test_when_no_fine_tuning_fits_the_head_alone_on_cached_features_does():
    # lite0 at half size needs ~8 s per epoch: 3 epochs + evaluation do not fit 25 s; its head alone (~23 s)
    # does, where the slower backbones' would not
    choice = plan(25)
    assert choice.strategy == "linear" and choice.backbone == "efficientnet_lite0"
    assert "head on cached features" in choice.reason


def test_a_budget_too_small_for_anything_plans_nothing():
    assert plan(3) is None


def test_sizes_stay_multiples_of_16():
    assert [scaled_size(224, s) for s in (1.0, 0.75, 0.5)] == [224, 160, 112]
    assert scaled_size(40, 0.5) == 32


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1.5h", 5400.0)])
def test_durations_read_with_their_unit(text, seconds):
    assert Duration()(text, "--time-budget") == seconds


@pytest.mark.parametrize("text", ["10", "ten minutes", "0s", "-5m", "10d"])
def test_a_duration_without_a_unit_or_out_of_range_is_refused_by_name(text):
    with pytest.raises(InvalidOption, match="--time-budget"):
        Duration()(text, "--time-budget")


def test_the_guard_ends_training_at_an_epoch_boundary_after_the_deadline():
    from posetune.training.loop import Settings, drive_epochs

    trained = []

    def train_epoch(epoch, state):
        trained.append(epoch)
        return {"images": 1}

    settings = Settings(epochs=5, patience=0, deadline=time.perf_counter() - 1.0)  # already past
    result = drive_epochs(settings, train_epoch, lambda: {"val_accuracy": 0.5, "val_loss": 1.0}, lambda row: {})
    assert trained == [1] and result.stopped_by_deadline  # the first epoch always runs: weights to keep
    unbounded = drive_epochs(Settings(epochs=3, patience=0), train_epoch, lambda: {"val_accuracy": 0.5}, lambda r: {})
    assert len(unbounded.history) == 3 and not unbounded.stopped_by_deadline


def test_validation_slower_than_the_plan_said_leaves_the_final_evaluation_its_time():
    """The planner leaves ``final_eval_s`` for scoring val + test after the last epoch; when each epoch's own
    validation runs slower per image than that assumed, the guard and the stretch leave the difference too."""
    from posetune.training.loop import Settings, drive_epochs, final_eval_shortfall, stretched_epochs

    history = [{"train_seconds": 1.0, "seconds": 1.2}, {"train_seconds": 1.0, "seconds": 1.5}]  # 0.2 s, 0.5 s
    planned = Settings(epochs=5, final_eval_s=10.0, final_images=1000, val_images=20)
    assert final_eval_shortfall(planned, history) == pytest.approx(1000 * 0.5 / 20 - 10.0)  # the slowest: 15 s
    assert final_eval_shortfall(Settings(epochs=5, final_eval_s=30.0, final_images=1000, val_images=20),
                                history) == 0.0  # the plan left enough
    assert final_eval_shortfall(Settings(epochs=5, final_eval_s=1.0), history) == 0.0  # no counts: the plan's
    target = Settings(epochs=3, target=time.perf_counter() + 35.0, stretch_to=8)
    assert stretched_epochs(target, 10.0, 3, shortfall=20.0) == 3 < stretched_epochs(target, 10.0, 3) == 4

    def train_epoch(epoch, state):
        return {"images": 1}

    def slow_val():
        time.sleep(0.05)  # 0.05 s for 10 val images: the 1,000 final images take 5 s, the plan left 1 s
        return {"val_accuracy": 0.5, "val_loss": 1.0}

    settings = Settings(epochs=5, patience=0, deadline=time.perf_counter() + 3.0, final_eval_s=1.0,
                        final_images=1000, val_images=10)
    result = drive_epochs(settings, train_epoch, slow_val, lambda row: {})
    assert len(result.history) == 1 and result.stopped_by_deadline  # 3 s left, less the 4 s shortfall
    roomy = drive_epochs(dataclasses.replace(settings, deadline=time.perf_counter() + 60.0), train_epoch, slow_val,
                         lambda row: {})
    assert len(roomy.history) == 5 and not roomy.stopped_by_deadline


@pytest.mark.parametrize("seconds_left, epoch_seconds, expected", [
    (100.0, 10.0, 8),  # 1 run + 9 more fit: capped at 8
    (35.0, 10.0, 4),  # 1 run + 3 more fit
    (5.0, 10.0, 3),  # fewer fit than planned: the plan stays (the deadline guard ends it early if it must)
])
def test_the_first_epoch_sets_how_many_epochs_fit_before_the_target(seconds_left, epoch_seconds, expected):
    from posetune.training.loop import Settings, stretched_epochs

    settings = Settings(epochs=3, target=time.perf_counter() + seconds_left, stretch_to=8)
    assert stretched_epochs(settings, epoch_seconds, 3) == expected
    assert stretched_epochs(Settings(epochs=3), epoch_seconds, 3) == 3  # no budget: as planned


def test_a_stretched_run_trains_the_new_epochs_and_its_checkpoint_remembers_them():
    from posetune.training.loop import Settings, drive_epochs

    asked, saved = [], []
    settings = Settings(epochs=3, patience=0, target=time.perf_counter() + 3600, stretch_to=6)
    result = drive_epochs(settings, lambda epoch, state: time.sleep(0.01) or {"images": 1}, lambda: {"val_accuracy": 0.5},
                          lambda row: {}, checkpoint=lambda state, best: saved.append(state.epochs),
                          stretch=lambda n: asked.append(n) or n)
    assert asked == [6] and len(result.history) == 6 and result.stretched_to == 6
    assert result.history[0]["stretched_to"] == 6 and saved == [6] * 6
    # without a stretch callback (the head on cached features) the plan stands
    plain = drive_epochs(settings, lambda epoch, state: {"images": 1}, lambda: {"val_accuracy": 0.5}, lambda r: {})
    assert len(plain.history) == 3 and plain.stretched_to is None
    # too little time to stretch: the callback is still called once (on DDP it is a collective every rank joins)
    asked.clear()
    short = Settings(epochs=3, patience=0, target=time.perf_counter(), stretch_to=6)
    kept = drive_epochs(short, lambda epoch, state: {"images": 1}, lambda: {"val_accuracy": 0.5}, lambda r: {},
                        stretch=lambda n: asked.append(n) or n)
    assert asked == [3] and len(kept.history) == 3 and kept.stretched_to is None


def test_a_resumed_stretched_run_runs_the_checkpoints_epochs_without_stretching_again():
    from posetune.training.loop import LoopState, Settings, drive_epochs

    asked, trained = [], []
    settings = Settings(epochs=3, patience=0, target=time.perf_counter() + 3600, stretch_to=9)
    result = drive_epochs(settings, lambda epoch, state: trained.append(epoch) or {"images": 1},
                          lambda: {"val_accuracy": 0.5}, lambda row: {}, state=LoopState(epoch=2, epochs=6),
                          stretch=lambda n: asked.append(n) or n)
    assert trained == [3, 4, 5, 6] and asked == [] and result.stretched_to == 6


def test_stretching_the_schedule_after_warm_up_matches_a_schedule_planned_that_long():
    import torch

    from posetune.training.loop import cosine_with_warmup

    def lrs(scheduler, steps):
        out = []
        for _ in range(steps):
            out.append(scheduler.get_last_lr()[0])
            scheduler.optimizer.step()
            scheduler.step()
        return out

    def scheduler(total):
        return cosine_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total, 10)

    planned, stretched = scheduler(60), scheduler(30)
    warm = lrs(stretched, 10)  # epoch 1 = the warm-up
    stretched.lr_lambdas[0].total_steps = 60
    assert warm + lrs(stretched, 50) == pytest.approx(lrs(planned, 60))
    resumed = scheduler(30)
    resumed.load_state_dict(stretched.state_dict())  # a checkpoint keeps the stretched end
    assert resumed.lr_lambdas[0].total_steps == 60


@pytest.mark.parametrize("warmup", [10, 4])  # one epoch of 10 steps; shorter: the next step's LR is recomputed
@pytest.mark.parametrize("other_rank", [None, 4])  # alone, or beside a rank that proposed 4 epochs
def test_trainer_stretch_agrees_over_ranks_and_continues_the_schedule_planned_that_long(warmup, other_rank):
    from types import SimpleNamespace

    import torch

    from posetune.training.loop import Trainer, cosine_with_warmup

    def trainer(total):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        dist = SimpleNamespace(enabled=other_rank is not None, world=2, sum=lambda xs: [xs[0] + (other_rank or 0)])
        return SimpleNamespace(optimizer=opt, scheduler=cosine_with_warmup(opt, total, warmup), steps_per_epoch=10,
                               dist=dist)

    def lrs(t, steps):
        out = []
        for _ in range(steps):
            out.append(t.optimizer.param_groups[0]["lr"])
            t.optimizer.step()
            t.scheduler.step()
        return out

    agreed = 6 if other_rank is None else (6 + other_rank) // 2  # the mean proposal, the same on every rank
    planned, stretched = trainer(10 * agreed), trainer(30)
    warm = lrs(stretched, 10)
    assert Trainer.stretch(stretched, 6) == agreed
    assert stretched.scheduler.get_last_lr() == [stretched.optimizer.param_groups[0]["lr"]]
    expected = lrs(planned, 10 * agreed)
    assert lrs(stretched, 10 * agreed - 10) == pytest.approx(expected[10:])  # every step after the stretch
    if warmup == 10:  # epoch 1 is all warm-up: the whole curve is the longer plan's
        assert warm == pytest.approx(expected[:10])
    assert Trainer.stretch(stretched, 2) == (2 if other_rank is None else 3)  # never shortens the schedule
    assert stretched.scheduler.lr_lambdas[0].total_steps == 10 * agreed


def test_cli_time_budget_prints_its_choice_trains_and_records_the_decision(shapes_kaggle, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.setattr(budget_module, "REFIT_MIN_EPOCHS_SHARE", 1000)  # one run (the next test plans a refit)
    out = tmp_path / "run"
    code, stdout, _ = run_cli(monkeypatch, capsys, [
        "train", shapes_kaggle, "--backbone", TINY["backbone"], "--no-pretrained", "--batch-size", "16",
        "--time-budget", "60s", "--out", out, "--json"])
    assert code == 0
    printed = json.loads(stdout)
    meta = json.loads((out / "model.json").read_text())
    budget = meta["budget"]
    assert printed["budget"]["chosen"] == budget["chosen"] and budget["time_budget_s"] == 60.0
    assert meta["strategy"] == budget["chosen"]["strategy"]
    assert meta["preprocessing"]["input_size"][-1] == budget["chosen"]["image_size"]
    assert 1 <= meta["epochs_run"] == budget["epochs_run"] <= (budget["stretched_to"] or budget["chosen"]["epochs"])
    assert budget["measured"][0]["backbone"] == TINY["backbone"] and budget["measured"][0]["images_per_s"] > 0
    assert sum(p["chosen"] for p in budget["plans"]) == 1
    assert budget["patience"] == 10  # no --patience: half the 20 epochs a budgeted run may stretch to
    # killed before the run folder was finished (only its config and checkpoint left): the resumed run keeps
    # the decision, which the checkpoint carries as plain data
    import torch

    assert torch.load(out / "checkpoint" / "last.pt", weights_only=True)["budget"]["chosen"] == budget["chosen"]
    for name in ("model.json", "model.safetensors", "metrics.json"):
        (out / name).unlink()
    code, stdout, _ = run_cli(monkeypatch, capsys, ["train", "--resume", out])
    assert code == 0 and "its decision is kept" in stdout
    resumed = json.loads((out / "model.json").read_text())["budget"]
    assert {k: resumed[k] for k in ("chosen", "plans", "time_budget_s")} == {k: budget[k] for k in ("chosen", "plans", "time_budget_s")}


@pytest.mark.slow
def test_cli_time_budget_with_time_for_two_runs_refits_and_resumes_with_its_decision(shapes_kaggle, tmp_path,
                                                                                      monkeypatch, capsys):
    """A refit plan (plan_budget's choice of it is tested above; here it is made a refit of 3 epochs, which the
    tiny run fits in a short budget): the selection run stretches into its share of the budget, the final run trains
    train + val for the epochs the selection ran; both record the decision."""
    plan = budget_module.plan_budget
    monkeypatch.setattr(budget_module, "plan_budget", lambda *a, **k: dataclasses.replace(
        plan(*a, **k), strategy="partial", refit=True, epochs=3))
    out = tmp_path / "run"
    code, stdout, err = run_cli(monkeypatch, capsys, [
        "train", shapes_kaggle, "--backbone", TINY["backbone"], "--no-pretrained", "--batch-size", "16",
        "--time-budget", "30s", "--out", out, "--json"])
    assert code == 0, err
    printed = json.loads(stdout)
    meta = json.loads((out / "model.json").read_text())
    budget, refit = meta["budget"], meta["refit"]
    assert budget["chosen"]["refit"] is True and printed["budget"]["chosen"] == budget["chosen"]
    assert sum(p["chosen"] for p in budget["plans"]) == 1
    selection = json.loads((out / "selection" / "model.json").read_text())
    assert selection["budget"]["chosen"] == budget["chosen"]
    # the final run repeats the selection's epochs (stretched or stopped early, as it went), unless the budget's
    # guard ended it sooner (a loaded machine)
    assert refit["epochs"] == selection["epochs_run"] == budget["selection"]["epochs_run"]
    assert meta["epochs_run"] == refit["epochs"] or (budget["stopped_by_deadline"] and meta["epochs_run"] < refit["epochs"])
    assert budget["selection"]["stretched_to"] == selection["budget"]["stretched_to"]
    assert budget["stretched_to"] is None  # the final run does not stretch
    assert refit["n_train"] == 30 + refit["selection_val"]["n"]  # shapes_kaggle's 36 TRAIN images, 6 of them val
    assert set(meta["metrics"]) == {"test"} and set(selection["metrics"]) == {"val"}
    # resumed after the selection finished (the final run's folder files lost): the decision is the selection's
    for name in ("model.json", "model.safetensors", "metrics.json", "report.md"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    code, stdout, err = run_cli(monkeypatch, capsys, ["train", "--resume", out])
    assert code == 0, err
    resumed = json.loads((out / "model.json").read_text())["budget"]
    assert {k: resumed[k] for k in ("chosen", "plans", "time_budget_s", "selection")} == \
        {k: budget[k] for k in ("chosen", "plans", "time_budget_s", "selection")}


def test_cli_budget_too_small_names_the_smallest_that_works(shapes_kaggle, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, [
        "train", shapes_kaggle, "--backbone", TINY["backbone"], "--no-pretrained", "--time-budget", "1s",
        "--out", tmp_path / "run"])
    assert code == 2
    assert "too small" in err and "give at least --time-budget" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_time_budget_refuses_the_options_it_chooses(shapes_kaggle, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, ["train", shapes_kaggle, "--time-budget", "5m", "--epochs", "3"])
    assert code == 2 and "drop --epochs" in err


def test_the_python_api_takes_time_budget_like_the_cli(shapes_kaggle, tmp_path):
    import posetune
    from posetune.errors import UsageError

    with pytest.raises(UsageError, match="give at least --time-budget"):
        posetune.train(shapes_kaggle, time_budget="1s", backbone=TINY["backbone"], pretrained=False,
                       out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_time_budget_with_the_pose_backbone_measures_landmarks_and_trains(tmp_path, tmp_path_factory, monkeypatch,
                                                                          capsys):
    """`pose` takes part with measured throughput: the model's own on cached landmarks, BlazePose's measured time
    per image in the plan's per-image cost; the run trains within its budget's guard and records the decision."""
    from posetune.data.synth import render_dataset

    data = tmp_path / "data"
    render_dataset(data, poses=["plank", "tree", "goddess"], per_class=6, test_per_class=2, size=128)
    monkeypatch.setenv("POSETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, [
        "train", data, "--backbone", "pose", "--batch-size", "16", "--time-budget", "60s", "--out", out, "--json"])
    assert code == 0, err
    meta = json.loads((out / "model.json").read_text())
    budget = meta["budget"]
    assert meta["kind"] == "pose" and budget["chosen"]["backbone"] == "pose"
    assert budget["measured"][0]["images_per_s"] > 0
    assert 1 <= budget["epochs_run"] <= (budget["stretched_to"] or budget["chosen"]["epochs"])
    assert set(meta["no_person"]["train"]) == {"goddess", "plank", "tree"}


@pytest.mark.parametrize("moved_to, says", [
    (9, "the epochs that fit; planned 6"),
    (12, "the most it may stretch to; planned 6"),
])
def test_the_epoch_bar_says_where_the_schedule_stretched_and_why(moved_to, says):
    from posetune.console import Reporter
    from posetune.training.job import EpochProgress

    class Recorder(Reporter):
        def __init__(self):
            self.lines, self.bars = [], []

        def info(self, msg):
            self.lines.append(msg)

        def start(self, description, total):
            self.bars.append(description)
            return super().start(description, total)

    reporter = Recorder()
    progress = EpochProgress(reporter, images=10, epochs=6, first=1, most=12)
    progress.epoch({"epoch": 1, "seconds": 42.0, "stretched_to": moved_to})
    assert reporter.lines == [f"time budget: epoch 1 took 42 s, so the schedule now ends at epoch {moved_to} ({says})"]
    assert progress.epochs == moved_to and reporter.bars == ["epoch 1", "epoch 2"]


def test_one_timed_step_prices_the_other_backbones_and_the_chosen_one_is_timed_where_it_trains():
    # Fashion-MNIST-1k on a 2-core CPU: lite0's step timed at 224 px (23.96 img/s, forward 68.22); lite1's and
    # lite2's steps untimed, their ratios were within 0.30-0.36 of lite0's 0.35
    lite0 = Candidate("efficientnet_lite0", 0.80, 68.22, 224)
    lite1 = Candidate("efficientnet_lite1", 0.82, 45.52, 240)
    pose = Candidate("pose", 0.5, 900.0, 256)
    failed = Candidate("resnet50", 0.7, 20.0, 224)
    budget_module.estimated_train_rates([lite1, lite0, pose, failed], {"efficientnet_lite0": 23.96, "resnet50": None},
                                        {"efficientnet_lite1"})
    assert (lite0.train_images_per_s, lite0.train_rate_estimated) == (23.96, False)
    assert lite1.train_rate_estimated and lite1.train_images_per_s == pytest.approx(45.52 * 23.96 / 68.22, abs=0.01)
    # measure() leaves the landmark kinds out of both (never timed); a step that failed stays unpriced, so the
    # plan neither times it again nor trusts another backbone's ratio for it
    assert pose.train_images_per_s is None and not pose.train_rate_estimated
    assert failed.train_images_per_s is None and not failed.train_rate_estimated
    # chosen at its pretrained size with an estimated step: timed there before training, and planned again
    timed = []

    def time_step(c: Candidate, size: int) -> float:
        timed.append((c.backbone, size))
        return 12.0

    counts = {"n_train": 100, "n_val": 20, "n_test": 20}
    choice = plan_with_timed_steps([lite1], counts, lambda: 2000, 10, 0.0, time_step)
    assert timed == [("efficientnet_lite1", 240)] and lite1.train_rates == {240: 12.0}
    assert at_size(lite1, 240, train=True) == 12.0 and choice.image_size == 240
    # nothing timed (the probes' quarter of the budget ran out first): the three-forwards guess, as before
    untimed = Candidate("efficientnet_lite2", 0.8, 34.0, 260)
    budget_module.estimated_train_rates([untimed], {}, {"efficientnet_lite2"})
    assert untimed.train_images_per_s is None and not untimed.train_rate_estimated


def test_a_plan_that_moves_to_an_estimated_backbone_times_it_too():
    # every timed step runs at half its estimate: the plan moves from backbone to backbone and size to size; each
    # estimated backbone earns one more round, so the one it settles on is timed where it trains
    cands = [Candidate("efficientnet_lite2", 0.9, 34.0, 260, 11.0, train_rate_estimated=True),
             Candidate("efficientnet_lite1", 0.85, 45.0, 240, 15.0, train_rate_estimated=True),
             Candidate("efficientnet_lite0", 0.8, 68.0, 224, 24.0)]
    timed = []

    def time_step(c: Candidate, size: int) -> float:
        timed.append((c.backbone, size))
        return 0.5 * at_size(c, size, train=True)

    choice = plan_with_timed_steps(cands, {"n_train": 500, "n_val": 100, "n_test": 100}, lambda: 225, 10, 0.0,
                                   time_step)
    chosen = next(c for c in cands if c.backbone == choice.backbone)
    assert len(timed) == len(set(timed)) <= budget_module.TIMING_ROUNDS + 2
    assert choice.image_size in chosen.train_rates or (not chosen.train_rate_estimated
                                                        and choice.image_size == chosen.image_size), timed
