"""The asana catalogue: each pose is a set of joint angles for the figure to bend into."""

from __future__ import annotations

from dataclasses import dataclass

Angles3 = tuple[float, float, float]


@dataclass(frozen=True)
class PoseTemplate:
    """Joint angles (degrees) of one asana, seen facing +x (mirrored at random when rendered).

    ``torso`` is the absolute direction pelvis -> neck (90 = upright). Limbs are relative to
    their parent: upper arm = torso - 180 + s*shoulder (0 = hanging, 90 = forward/out,
    180 = overhead), forearm = upper + s*elbow, hand = forearm + s*wrist; thigh =
    pelvis - 180 + s*hip, shin = thigh - s*knee, foot = shin + s*(90 + ankle); head =
    torso - neck. ``s`` is +1 for both limbs in a side view; in a front view limb 0 is on
    the -x side with s = -1, so symmetric poses list the same numbers twice.
    Limb 0 is the far limb in a side view (drawn behind the body, darker).
    """

    name: str
    description: str
    view: str  # "side" | "front"
    torso: float
    neck: float = 0.0
    pelvis: float | None = None  # absolute pelvis-axis direction; None = same as torso
    arms: tuple[Angles3, Angles3] = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))  # shoulder, elbow, wrist
    legs: tuple[Angles3, Angles3] = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))  # hip, knee, ankle


def _sym(a: Angles3) -> tuple[Angles3, Angles3]:
    return (a, a)


_TEMPLATES = [
    PoseTemplate("downdog", "inverted V: hands and feet on the floor, hips highest", "side",
                 torso=-42, neck=5, arms=_sym((172, 0, 48)), legs=_sym((96, 0, 36))),
    PoseTemplate("goddess", "wide squat, knees bent out, cactus arms", "front",
                 torso=90, arms=_sym((92, 88, 0)), legs=_sym((68, 72, 0))),
    PoseTemplate("plank", "straight body nearly horizontal on straight arms", "side",
                 torso=19, neck=0, arms=_sym((71, 0, 90)), legs=_sym((0, 0, -20))),
    PoseTemplate("tree", "one leg standing, other foot at the inner thigh, arms overhead", "front",
                 torso=90, arms=_sym((168, 28, 0)), legs=((3, 0, 0), (50, 145, 5))),
    PoseTemplate("warrior2", "wide stance, front knee ~90 deg, arms horizontal", "front",
                 torso=90, arms=_sym((90, 0, 0)), legs=((56, 0, -56), (80, 80, 0))),
    PoseTemplate("mountain", "standing straight, arms by the sides", "front",
                 torso=90, arms=_sym((9, 6, 0)), legs=_sym((3, 0, 0))),
    PoseTemplate("chair", "knees bent, hips back, torso forward, arms overhead", "side",
                 torso=62, neck=-8, arms=_sym((188, 0, 0)), legs=_sym((85, 77, 20))),
    PoseTemplate("cobra", "lying prone, chest lifted on straight arms, legs on the floor", "side",
                 torso=42, neck=-28, arms=_sym((43, 8, 85)), legs=_sym((-42, 0, -90))),
    PoseTemplate("triangle", "wide straight legs, torso sideways, one arm down one arm up", "front",
                 torso=15, pelvis=90, arms=((105, 0, 0), (75, 0, 0)), legs=_sym((35, 0, -35))),
    PoseTemplate("bridge", "on the back, hips lifted, knees bent, feet on the floor", "side",
                 torso=-141, neck=39, arms=_sym((-39, 0, 0)), legs=_sym((-29, 105, 5))),
    PoseTemplate("child", "kneeling folded forward, forehead down, arms forward", "side",
                 torso=-18, neck=35, arms=_sym((193, 0, 5)), legs=_sym((168, 150, -90))),
    PoseTemplate("boat", "balancing on the sit bones, legs and torso raised in a V", "side",
                 torso=120, neck=20, arms=_sym((60, 0, 0)), legs=_sym((105, 0, -75))),
    PoseTemplate("crow", "balancing on bent arms, knees on the upper arms, feet lifted", "side",
                 torso=-35, neck=-25, arms=_sym((115, 20, 80)), legs=_sym((177, 172, -80))),
    PoseTemplate("headstand", "inverted on head and forearms, legs straight up", "side",
                 torso=-90, arms=_sym((200, -110, 0)), legs=_sym((0, 0, -90))),
    PoseTemplate("warrior1", "lunge, back leg straight, torso upright, arms overhead", "side",
                 torso=90, neck=-10, arms=_sym((180, 0, 0)), legs=((-55, 0, 55), (80, 80, 0))),
]

POSES: dict[str, PoseTemplate] = {t.name: t for t in _TEMPLATES}
KAGGLE_POSES: tuple[str, ...] = ("downdog", "goddess", "plank", "tree", "warrior2")


def check_pose(pose: str | PoseTemplate) -> PoseTemplate:
    """The template named ``pose`` (a template passes through: a video's in-between poses); an unknown name
    raises ValueError listing the valid ones."""
    if isinstance(pose, PoseTemplate):
        return pose
    if pose not in POSES:
        raise ValueError(f"unknown pose {pose!r}; valid poses: {', '.join(POSES)}")
    return POSES[pose]
