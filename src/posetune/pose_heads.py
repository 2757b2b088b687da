"""The torch modules behind the `pose` and `NAME+pose` backbone specs: a landmark MLP, and a CNN fused with it.

Both take ``(images, pose_features)``: the landmark features (posetune.pose.features, presence flag last) are
computed outside the model (once per image, cached), so these modules stay pure torch and export cleanly.
Both expose ``get_classifier()`` like a timm model, so the head's init, its stage and its LR follow the
same code paths as an image backbone.
"""

from __future__ import annotations

import torch
from torch import nn

POSE_EMBED_DIM = 64  # small on purpose: ~128 landmark numbers, a few hundred training images per class
POSE_HIDDEN_DIM = 128


def pose_embedding(pose_dim: int, drop_rate: float = 0.1) -> nn.Sequential:
    """Landmark features -> a POSE_EMBED_DIM embedding. LayerNorm first: angles (radians), distances and
    coordinates live on different scales, and a no-person row (all zeros) stays all zeros after it."""
    return nn.Sequential(
        nn.LayerNorm(pose_dim), nn.Linear(pose_dim, POSE_HIDDEN_DIM), nn.GELU(), nn.Dropout(drop_rate),
        nn.Linear(POSE_HIDDEN_DIM, POSE_EMBED_DIM), nn.GELU(),
    )


class PoseClassifier(nn.Module):
    """`pose`: landmark features -> MLP -> classes. The images are not looked at."""

    kind = "pose"

    def __init__(self, pose_dim: int, num_classes: int, drop_rate: float = 0.1):
        super().__init__()
        self.pose_dim = pose_dim
        self.embed = pose_embedding(pose_dim, drop_rate)
        self.classifier = nn.Linear(POSE_EMBED_DIM, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, images: torch.Tensor | None, pose: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(pose))


class FusionClassifier(nn.Module):
    """`NAME+pose`: the CNN's pooled features and the landmark embedding, concatenated into one linear head.

    With no person found the landmark row is zeros, its embedding a constant, so the head leans on the image.
    """

    kind = "fusion"

    def __init__(self, cnn: nn.Module, pose_dim: int, num_classes: int, drop_rate: float = 0.1):
        super().__init__()
        self.pose_dim = pose_dim
        cnn.reset_classifier(0)  # forward now gives the pooled features
        self.cnn = cnn
        self.embed = pose_embedding(pose_dim, drop_rate)
        self.classifier = nn.Linear(cnn.num_features + POSE_EMBED_DIM, num_classes)

    @property
    def pretrained_cfg(self) -> dict:
        return self.cnn.pretrained_cfg  # preprocessing (mean/std/size) is the CNN's

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def fuse(self, image_features: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The head on already pooled CNN features: what `linear` trains from the cached-feature path."""
        return self.classifier(torch.cat([image_features, self.embed(pose)], dim=1))

    def forward(self, images: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.cnn(images), pose)


class FeatureHead(nn.Module):
    """What the `linear` strategy trains on cached rows: for fusion [pooled CNN features | landmark features],
    for `pose` the landmark features alone. Shares its modules with the model, so training it trains the model's
    head (the landmark embedding and the classifier)."""

    def __init__(self, model: PoseClassifier | FusionClassifier):
        super().__init__()
        self.embed, self.classifier, self.pose_dim = model.embed, model.classifier, model.pose_dim

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        image, pose = rows[:, : -self.pose_dim], rows[:, -self.pose_dim:]
        return self.classifier(torch.cat([image, self.embed(pose)], dim=1))
