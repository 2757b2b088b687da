"""Synthetic yoga-pose images in the Kaggle "Yoga Poses Dataset" layout.

An articulated 2-D figure (forward kinematics from joint angles rooted at the pelvis) is
drawn with shaded, outlined capsules on a 2x canvas and box-downsampled for anti-aliasing,
then composited on a random background. Every nuisance factor (proportions, colours,
background, mat, lighting, blur, noise, JPEG quality, camera scale/position/roll, mirroring)
is drawn from one distribution shared by all poses, and the figure's bounding box is scaled
to the same size range for every pose, so only the body configuration identifies the class.

Modules, each importing only those before it: ``poses`` (the asana catalogue), ``colours``,
``figure`` (body geometry and drawing), ``scene`` (backgrounds and camera effects),
``render`` (one image), ``dataset`` (a folder of images and a preview).

>>> import numpy as np
>>> render_pose("tree", np.random.default_rng(0), size=64).size
(64, 64)
"""

from __future__ import annotations

from posetune.data.synth.dataset import _image_rng as _image_rng  # tests rebuild dataset images from it
from posetune.data.synth.dataset import render_dataset
from posetune.data.synth.poses import KAGGLE_POSES, POSES, PoseTemplate
from posetune.data.synth.render import render_pose

__all__ = ["KAGGLE_POSES", "POSES", "PoseTemplate", "render_dataset", "render_pose"]
