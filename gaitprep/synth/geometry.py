"""The walker's 3D body as simple solids, posed over a whole sequence at once.

A body is a set of tapered **capsules** (limbs, neck, head, feet, bags) and of **ring chains**
(torso, coat skirt, backpack): horizontal elliptical cross-sections stacked along a chain whose
outline, seen from any direction, is the hull of the rings' extreme points. Both are posed in the
*body frame* (x forward, y up, z to the walker's left, origin on the ground under the pelvis) for
every frame at once, so the cost per frame is a few array operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gaitprep.synth import kinematics as kin
from gaitprep.synth.body import Outfit, Subject


@dataclass
class Capsules:
    """Tapered capsules: segment ``a[t, i]``–``b[t, i]`` with radii ``ra[i]``, ``rb[i]``."""

    a: np.ndarray  # [T, C, 3]
    b: np.ndarray  # [T, C, 3]
    ra: np.ndarray  # [C]
    rb: np.ndarray  # [C]


@dataclass
class RingChain:
    """Elliptical cross-sections: centre, lateral and forward unit axes, half-width and depth."""

    centre: np.ndarray  # [T, R, 3]
    lateral: np.ndarray  # [T, R, 3]
    forward: np.ndarray  # [T, R, 3]
    half_w: np.ndarray  # [T, R]
    half_d: np.ndarray  # [T, R]


@dataclass
class Figure:
    """A posed body over T frames: its capsules, ring chains and pelvis track."""

    capsules: Capsules
    chains: list[RingChain]


def _rot_y(vec: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """Rotate ``vec`` [..., 3] about the vertical axis; positive turns +z towards +x."""
    a = np.deg2rad(angle_deg)[..., None]
    vec = np.broadcast_to(vec, np.broadcast_shapes(vec.shape, a.shape[:-1] + (3,)))
    x, y, z = vec[..., 0:1], vec[..., 1:2], vec[..., 2:3]
    return np.concatenate([x * np.cos(a) + z * np.sin(a), y, -x * np.sin(a) + z * np.cos(a)], -1)


def _dir(angle_deg: np.ndarray, side_tilt: float = 0.0, side: int = 1) -> np.ndarray:
    """Unit vector hanging down at ``angle_deg`` forward of vertical, tilted sideways."""
    a = np.deg2rad(angle_deg)
    t = np.deg2rad(side_tilt)
    return np.stack(
        [np.sin(a) * np.cos(t), -np.cos(a) * np.cos(t), np.full_like(a, side * np.sin(t))], -1
    )


def _leg(s: Subject, phase: np.ndarray, hip: np.ndarray, side: int) -> dict[str, np.ndarray]:
    thigh = kin.hip_flexion(phase, s.hip_amp)
    shank = thigh - kin.knee_flexion(phase, s.knee_stance, s.knee_swing)
    foot = shank + kin.ankle_dorsiflexion(phase)
    knee = hip + s.thigh * _dir(thigh)
    ankle = knee + s.shin * _dir(shank)
    f = np.deg2rad(foot)
    toe_out = np.deg2rad(s.toe_out)
    along = np.stack(
        [np.cos(f) * np.cos(toe_out), np.sin(f), side * np.cos(f) * np.sin(toe_out)], -1
    )
    down = _dir(foot)
    sole = ankle + 0.55 * s.ankle * down
    return {
        "hip": hip,
        "knee": knee,
        "ankle": ankle,
        "heel": sole - 0.2 * s.foot * along,
        "toe": sole + 0.72 * s.foot * along,
    }


def _arm(
    s: Subject, phase: np.ndarray, shoulder: np.ndarray, side: int, swing: float, elbow: float
) -> dict[str, np.ndarray]:
    upper = kin.shoulder_flexion(phase, swing)
    fore = upper + kin.elbow_flexion(phase, elbow)
    elbow_p = shoulder + s.upper_arm * _dir(upper, 7.0, side)
    wrist = elbow_p + s.forearm * _dir(fore, 4.0, side)
    return {
        "shoulder": shoulder,
        "elbow": elbow_p,
        "wrist": wrist,
        "hand": wrist + s.hand * _dir(fore),
    }


def pose(s: Subject, outfit: Outfit, phase: np.ndarray) -> Figure:
    """Pose ``s`` wearing ``outfit`` at gait phases ``phase`` [T] (right leg's, in cycles).

    The pelvis height is set per frame so that the lowest point of either foot touches the
    ground, which produces the natural vertical bob of walking.
    """
    h = s.height
    T = len(phase)
    right, left = phase, phase + 0.5
    twist = kin.pelvis_rotation(phase, s.pelvis_twist)
    pelvis = np.zeros((T, 3))
    hip_sep = 0.52 * s.hip_w
    legs = {
        side: _leg(s, ph, _rot_y(np.array([0.0, 0.0, side * hip_sep]), twist), side)
        for side, ph in ((1, left), (-1, right))
    }
    foot_r = 0.4 * s.ankle
    lowest = np.minimum.reduce([legs[k][p][:, 1] for k in legs for p in ("heel", "toe")]) - foot_r
    lift = -lowest[:, None] * np.array([0.0, 1.0, 0.0])
    pelvis = pelvis + lift
    for leg in legs.values():
        for k in leg:
            leg[k] = leg[k] + lift

    lean = np.deg2rad(s.lean)
    axis = np.array([np.sin(lean), np.cos(lean), 0.0])
    top = pelvis + s.torso * axis
    thorax_twist = -0.6 * twist
    arms = {}
    for side, ph in ((1, left), (-1, right)):
        offset = _rot_y(
            np.array([0.0, 0.0, side * (s.shoulder_w - 0.028 * h * s.limb)]), thorax_twist
        )
        drop = s.shoulder_drop if side < 0 else 0.0
        shoulder = top - (0.07 * s.torso + drop) * axis + offset
        swing = s.arm_swing * (s.arm_ratio if side < 0 else 1.0)
        elbow = s.elbow
        if outfit.bag == "hand" and side == outfit.bag_side:
            swing, elbow = 0.25 * swing, 0.5 * elbow
        arms[side] = _arm(s, ph, shoulder, side, swing, elbow)

    head_a = np.deg2rad(s.lean + s.head_lean)
    head_axis = np.array([np.sin(head_a), np.cos(head_a), 0.0])
    neck_top = top + s.neck * head_axis
    head_c = neck_top + 0.95 * s.head_r * head_axis + np.array([0.12 * s.head_r, 0.0, 0.0])

    caps: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    limb = s.limb * h
    coat = outfit.coat
    for leg in legs.values():
        caps.append((leg["hip"], leg["knee"], 0.050 * limb, 0.034 * limb))
        caps.append((leg["knee"], leg["ankle"], 0.033 * limb, 0.019 * limb))
        mid = leg["heel"] + 0.35 * (leg["toe"] - leg["heel"])
        caps.append((leg["ankle"], mid, 0.02 * limb, foot_r))
        caps.append((leg["heel"], leg["toe"], foot_r, 0.8 * foot_r))
    for arm in arms.values():
        upper = (0.028 * limb + 0.6 * coat, 0.021 * limb + 0.5 * coat)
        caps.append((arm["shoulder"], arm["elbow"], *upper))
        caps.append(
            (arm["elbow"], arm["wrist"], 0.020 * limb + 0.4 * coat, 0.014 * limb + 0.3 * coat)
        )
        caps.append((arm["wrist"], arm["hand"], 0.017 * limb, 0.012 * limb))
    caps.append((top, neck_top, 0.03 * h, 0.026 * h))
    caps.append(
        (
            head_c - 0.3 * s.head_r * head_axis,
            head_c + 0.3 * s.head_r * head_axis,
            0.75 * s.head_r,
            0.75 * s.head_r,
        )
    )

    chains = [_torso(s, pelvis, axis, twist, thorax_twist, coat)]
    if coat > 0:
        chains.append(_skirt(s, outfit, pelvis, legs, twist))
    _add_bag(s, outfit, phase, pelvis, axis, arms, caps, chains)

    capsules = Capsules(
        a=np.stack([np.broadcast_to(c[0], (T, 3)) for c in caps], 1),
        b=np.stack([np.broadcast_to(c[1], (T, 3)) for c in caps], 1),
        ra=np.array([c[2] for c in caps]),
        rb=np.array([c[3] for c in caps]),
    )
    return Figure(capsules=capsules, chains=chains)


def _chain(centres, half_w, half_d, twist_deg) -> RingChain:
    """Build a ring chain from centres [T, R, 3], widths [T, R] and twists [T, R] (degrees)."""
    ez = np.array([0.0, 0.0, 1.0])
    ex = np.array([1.0, 0.0, 0.0])
    return RingChain(
        centre=centres,
        lateral=_rot_y(np.broadcast_to(ez, centres.shape), twist_deg),
        forward=_rot_y(np.broadcast_to(ex, centres.shape), twist_deg),
        half_w=half_w,
        half_d=half_d,
    )


def _torso(s: Subject, pelvis, axis, twist, thorax_twist, coat: float) -> RingChain:
    # (position along the torso, half-width, half-depth, forward offset): hips to neck base.
    rings = np.array(
        [
            (-0.10, 0.92 * s.hip_w, 0.95 * s.hip_d, -0.1 * s.hip_d),
            (0.00, s.hip_w, s.hip_d, 0.0),
            (0.38, s.waist_w, s.waist_d, s.waist_d - 0.055 * s.height),
            (0.72, s.chest_w, s.chest_d, 0.2 * s.chest_d),
            (0.90, s.shoulder_w, 0.8 * s.chest_d, 0.0),
            (1.00, 0.45 * s.shoulder_w, 0.6 * s.chest_d, 0.0),
        ]
    )
    pos, w, d, fwd = rings.T
    centres = pelvis[:, None, :] + pos[None, :, None] * s.torso * axis
    centres = centres + fwd[None, :, None] * np.array([1.0, 0.0, 0.0])
    tw = twist[:, None] * (1 - pos) + thorax_twist[:, None] * pos
    T = len(pelvis)
    grow = np.where(pos < 1.0, coat, 0.5 * coat)
    return _chain(centres, np.tile(w + grow, (T, 1)), np.tile(d + grow, (T, 1)), tw)


def _skirt(s: Subject, outfit: Outfit, pelvis, legs, twist) -> RingChain:
    """A coat's lower part, from the hips to a hem that the thighs push apart."""
    f = min(1.0, outfit.coat_length / s.thigh)
    pts = [leg["hip"] + f * (leg["knee"] - leg["hip"]) for leg in legs.values()]
    hem_x = 0.5 * (pts[0][:, 0] + pts[1][:, 0])
    spread = 0.5 * np.abs(pts[0][:, 0] - pts[1][:, 0])
    T = len(pelvis)
    centres = np.stack([pelvis, pelvis.copy()], 1)
    centres[:, 1, 0] = hem_x
    centres[:, 1, 1] = pelvis[:, 1] - outfit.coat_length
    c = outfit.coat
    half_w = np.stack([np.full(T, s.hip_w + c), np.full(T, s.hip_w + 1.5 * c + 0.02)], 1)
    half_d = np.stack([np.full(T, s.hip_d + c), spread + 0.04 * s.height * s.limb + c], 1)
    return _chain(centres, half_w, half_d, np.stack([twist, 0.5 * twist], 1))


def _add_bag(s: Subject, outfit: Outfit, phase, pelvis, axis, arms, caps, chains) -> None:
    if outfit.bag is None:
        return
    k, side = outfit.bag_size, outfit.bag_side
    T = len(phase)
    if outfit.bag == "backpack":
        back = -(s.chest_d + 0.075 * k)
        lo = pelvis + 0.45 * s.torso * axis + np.array([back, 0.0, 0.0])
        hi = pelvis + 0.92 * s.torso * axis + np.array([back, 0.0, 0.0])
        centres = np.stack([hi, lo], 1)
        w = np.full((T, 2), 0.14 * k)
        d = np.full((T, 2), 0.075 * k)
        chains.append(_chain(centres, w, d, np.zeros((T, 2))))
    elif outfit.bag == "shoulder":
        sway = 0.025 * np.sin(2 * np.pi * phase)[:, None] * np.array([1.0, 0.0, 0.0])
        centre = pelvis + np.array([0.02, 0.02, side * (s.hip_w + 0.05 * k)]) + sway
        half = np.array([0.11 * k, 0.0, 0.0])
        caps.append((centre - half, centre + half, 0.085 * k, 0.085 * k))
        strap_top = arms[-side]["shoulder"] + np.array([0.0, 0.04, 0.0])
        caps.append((strap_top, centre, 0.012, 0.012))
    elif outfit.bag == "hand":
        hand = arms[side]["hand"]
        caps.append((hand, hand - np.array([0.0, 0.12 * k, 0.0]), 0.03 * k, 0.03 * k))
        bottom = hand - np.array([0.0, 0.32 * k, 0.0])
        caps.append((hand - np.array([0.0, 0.12 * k, 0.0]), bottom, 0.10 * k, 0.10 * k))
