"""Stage 1 of `compare` for the landmark kinds (`pose`, `NAME+pose`): their rows and their probe.

A logistic regression folds into an image backbone's linear head, but not into the landmark embedding (an MLP)
that a pose or fusion model's head starts with. So the probe cell of a pose kind trains that head on the cached
rows ([pooled CNN features | landmark features] for fusion, the landmark features alone for `pose`) exactly as
the ``linear`` strategy of `posetune train` does; its k-NN runs on the same rows.
"""

from __future__ import annotations


class TrainedHead:
    """The probe of a `pose` / `NAME+pose` backbone: its head (the landmark embedding + the classifier: no
    logistic regression folds into an MLP) trained on the cached rows as the ``linear`` strategy trains it
    in `posetune train`. It is the model's own head, so there is nothing to fold."""

    C = None
    grid: tuple = ()  # no C grid: the head trains with the linear strategy's settings

    def __init__(self, head):
        self.head = head

    def logits(self, feats):
        import torch

        with torch.inference_mode():
            device = next(self.head.parameters()).device
            return self.head.eval()(feats.to(device)).float().cpu().numpy()

    def fold_into(self, head) -> None:
        pass


def fit_pose_head(model, feats: dict, batch_size: int, device) -> TrainedHead:
    """The head of a `pose` / `NAME+pose` model trained on (split -> (rows, labels)) as `train --strategy
    linear` trains it: the linear strategy's LR and epochs, early stopping on val, the best epoch kept."""
    from posetune.pose_heads import FeatureHead
    from posetune.strategies import get_strategy
    from posetune.training.heads import fit_head_on_features
    from posetune.training.loop import Settings

    linear = get_strategy("linear")
    head = FeatureHead(model).to("cpu")
    settings = Settings(epochs=linear.epochs, batch_size=batch_size, seed=0)
    result = fit_head_on_features(head, *feats["train"], *feats["val"], linear.lr, settings)
    head.load_state_dict(result.best_state)
    return TrainedHead(head.to(device))  # the model's own modules: back where the model is


def no_person_rows(spec, feats: dict, classes: list[str]) -> dict | None:
    """{split: {class: images with no person found}} for a pose kind (the rows end with the presence flag)."""
    if not spec.uses_pose:
        return None
    from posetune.pose.matrix import no_person_counts

    return {split: no_person_counts(x.numpy(), y.tolist(), classes) if len(y) else dict.fromkeys(classes, 0)
            for split, (x, y) in feats.items()}


def with_landmarks(ds, rows: list):
    """The images paired with their landmark rows, unaugmented (training's PoseDataset)."""
    import torch

    from posetune.training.pose_inputs import PoseDataset

    features = torch.stack(rows) if rows else torch.zeros(0, 0)
    return PoseDataset(ds, features, features, augment=False)
