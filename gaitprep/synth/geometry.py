"""The walker's 3D body as simple solids, posed over a whole sequence at once.

A body is a set of tapered **capsules** (limbs, neck, feet, hair, bags) and of **ring
chains** (head, torso, coat skirt, backpack): horizontal elliptical cross-sections stacked along
a chain whose outline, seen from any direction, is the hull of the rings' extreme points. Both
are posed in the *body frame* (x forward, y up, z to the walker's left, origin on the ground
under the pelvis) for every frame at once, so the cost per frame is a few array operations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gaitprep.synth import kinematics as kin
from gaitprep.synth.body import Subject
from gaitprep.synth.clothing import Clothes, Coat, Outfit


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


def _leg(
    s: Subject, phase: np.ndarray, hip: np.ndarray, side: int, toe: float
) -> dict[str, np.ndarray]:
    """Joint positions of one leg; ``toe`` (m) is how far the shoe reaches beyond the toes."""
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
        "heel": sole - (0.2 * s.foot + 0.3 * toe) * along,
        "toe": sole + (0.72 * s.foot + 0.7 * toe) * along,
    }


def _legs(s: Subject, phase: np.ndarray, twist: np.ndarray, toe: float) -> dict:
    """Both legs at the right leg's ``phase`` (the left runs half a cycle behind)."""
    hip_sep = 0.52 * s.hip_w
    return {
        side: _leg(s, ph, _rot_y(np.array([0.0, 0.0, side * hip_sep]), twist), side, toe)
        for side, ph in ((1, phase + 0.5), (-1, phase))
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

    The pelvis height is set per frame so that the lowest point of either shoe touches the
    ground, which produces the natural vertical bob of walking.
    """
    wear, coat = outfit.clothes, outfit.coat
    T = len(phase)
    twist = kin.pelvis_rotation(phase, s.pelvis_twist)
    legs = _legs(s, phase, twist, wear.toe)
    foot_r = 0.4 * s.ankle + wear.sole
    lowest = np.minimum.reduce([legs[k][p][:, 1] for k in legs for p in ("heel", "toe")]) - foot_r
    lift = -lowest[:, None] * np.array([0.0, 1.0, 0.0])
    pelvis = np.zeros((T, 3)) + lift
    for leg in legs.values():
        for k in leg:
            leg[k] = leg[k] + lift

    lean = np.deg2rad(s.lean)
    axis = np.array([np.sin(lean), np.cos(lean), 0.0])
    top = pelvis + s.torso * axis
    thorax_twist = -0.6 * twist
    # A coat restricts the arms' swing, the looser and heavier the more.
    restrict = 1.0 - 0.5 * coat.looseness if coat else 1.0
    arms = {}
    for side, ph in ((1, phase + 0.5), (-1, phase)):
        offset = _rot_y(np.array([0.0, 0.0, side * (s.shoulder_w - s.arm_r)]), thorax_twist)
        drop = s.shoulder_drop if side < 0 else 0.0
        shoulder = top - (0.07 * s.torso + drop) * axis + offset
        swing = s.arm_swing * (s.arm_ratio if side < 0 else 1.0) * restrict
        elbow = s.elbow
        if outfit.bag and outfit.bag.kind == "hand" and side == outfit.bag.side:
            swing, elbow = 0.25 * swing, 0.5 * elbow
        arms[side] = _arm(s, ph, shoulder, side, swing, elbow)

    caps: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    trousers = wear.trousers
    for leg in legs.values():
        caps.append((leg["hip"], leg["knee"], s.thigh_r + trousers, s.knee_r + 0.6 * trousers))
        caps.append(
            (leg["knee"], leg["ankle"], s.calf_r + 0.4 * trousers, max(s.ankle_r, wear.hem))
        )
        mid = leg["heel"] + 0.35 * (leg["toe"] - leg["heel"])
        caps.append((leg["ankle"], mid, s.ankle_r + 0.6 * wear.sole, foot_r))
        caps.append((leg["heel"], leg["toe"], foot_r, 0.8 * foot_r))
    for arm in arms.values():
        upper, fore = wear.sleeve, wear.sleeve if wear.long_sleeves else 0.0
        if coat:
            upper = fore = max(upper, fore) + coat.thickness + coat.sleeve
        caps.append((arm["shoulder"], arm["elbow"], s.arm_r + upper, 0.8 * s.arm_r + upper))
        caps.append((arm["elbow"], arm["wrist"], s.forearm_r + fore, s.wrist_r + 0.7 * fore))
        caps.append((arm["wrist"], arm["hand"], 1.1 * s.wrist_r, 0.8 * s.wrist_r))

    head_a = np.deg2rad(s.lean + s.head_lean)
    head_axis = np.array([np.sin(head_a), np.cos(head_a), 0.0])
    neck_top = top + s.neck * head_axis
    collar = coat.collar + 0.5 * coat.thickness if coat else 0.0
    caps.append((top, neck_top, s.neck_r + collar, 0.9 * s.neck_r + 0.5 * collar))
    head_c = neck_top + 0.6 * s.head_h * head_axis + np.array([0.15 * s.head_d, 0.0, 0.0])
    if wear.long_hair:
        back = head_c + 0.2 * s.head_h * head_axis - np.array([0.75 * s.head_d, 0.0, 0.0])
        end = back - np.array([0.1 * s.head_d, wear.long_hair, 0.0])
        caps.append((back, end, 0.6 * s.head_w, 0.45 * s.head_w))

    chains = [
        _head(s, wear, head_c, head_axis, thorax_twist),
        _torso(s, wear, coat, pelvis, axis, twist, thorax_twist),
    ]
    if coat:
        chains.append(_skirt(s, wear, coat, phase, pelvis, chains[1], legs, lift, twist))
    _add_bag(s, wear, outfit, phase, pelvis, axis, arms, caps, chains)

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


#: The head's rings, chin to vertex: (height / half height, half-width / head_w,
#: half-depth / head_d, forward offset / head_d).
_HEAD = np.array(
    [
        (-1.00, 0.45, 0.50, 0.40),
        (-0.70, 0.75, 0.78, 0.18),
        (-0.35, 0.92, 0.95, 0.05),
        (0.00, 1.00, 1.00, 0.00),
        (0.40, 0.97, 0.97, -0.02),
        (0.70, 0.82, 0.84, -0.04),
        (0.90, 0.55, 0.60, -0.05),
        (1.00, 0.25, 0.30, -0.05),
    ]
)


def _head(s: Subject, wear: Clothes, centre, axis, twist) -> RingChain:
    """The head as an egg of rings, hair on top and behind (not over the face)."""
    z, w, d, fwd = _HEAD.T
    covered = z >= -0.35  # the hair covers the skull, not the face and jaw
    half_w = w * s.head_w + covered * wear.hair
    half_d = d * s.head_d + covered * 0.5 * wear.hair
    fwd = fwd * s.head_d - covered * 0.5 * wear.hair
    up = z * s.head_h + (z >= 0.9) * wear.hair
    centres = centre[:, None, :] + up[None, :, None] * axis + fwd[None, :, None] * [1.0, 0, 0]
    T = len(centre)
    return _chain(
        centres,
        np.tile(half_w, (T, 1)),
        np.tile(half_d, (T, 1)),
        np.tile(twist[:, None], (1, len(z))),
    )


def _torso(s: Subject, wear: Clothes, coat: Coat | None, pelvis, axis, twist, thorax_twist):
    """Hips to neck base, in the shirt, and in the coat if there is one.

    A coat adds its thickness everywhere; its straight cut then replaces the outline between
    the hips and the chest by a tube as wide and deep as the widest of them, by ``looseness``.
    """
    # (position along the torso, half-width, half-depth, forward offset): hips to neck base.
    rings = np.array(
        [
            (-0.10, 0.92 * s.hip_w, 0.95 * s.hip_d, -0.1 * s.hip_d),
            (0.00, s.hip_w, s.hip_d, 0.0),
            (0.38, s.waist_w, s.waist_d, s.waist_d - 0.06 * s.height),
            (0.72, s.chest_w, s.chest_d, 0.2 * s.chest_d),
            (0.90, s.shoulder_w, 0.55 * s.chest_d, 0.0),
            (1.00, 0.45 * s.shoulder_w, 0.45 * s.chest_d, 0.0),
        ]
    )
    pos, w, d, fwd = rings.T
    w, d = w + wear.shirt, d + wear.shirt
    if coat:
        t, a = coat.thickness, coat.looseness
        cut = pos <= 0.72
        w = np.where(cut, (1 - a) * w + a * w[cut].max(), w) + t
        d = np.where(cut, (1 - a) * d + a * d[cut].max(), d) + t
        fwd = np.where(cut, (1 - a) * fwd + a * fwd[3], fwd)
        d[-1] += coat.collar
    centres = pelvis[:, None, :] + pos[None, :, None] * s.torso * axis
    centres = centres + fwd[None, :, None] * np.array([1.0, 0.0, 0.0])
    tw = twist[:, None] * (1 - pos) + thorax_twist[:, None] * pos
    T = len(pelvis)
    return _chain(centres, np.tile(w, (T, 1)), np.tile(d, (T, 1)), tw)


def _skirt(
    s: Subject, wear: Clothes, coat: Coat, phase, pelvis, torso: RingChain, legs, lift, twist
):
    """A coat's lower part, from the hips to a hem that the legs push apart.

    The hem follows the legs a little late (it swings) and reaches ``flare`` of the way to them.
    """
    lagged = _legs(s, phase - 0.06, twist, wear.toe)
    pts = []
    for leg in lagged.values():
        f = coat.length / s.thigh
        if f <= 1.0:
            pts.append(leg["hip"] + f * (leg["knee"] - leg["hip"]) + lift)
        else:
            g = min(1.0, (coat.length - s.thigh) / s.shin)
            pts.append(leg["knee"] + g * (leg["ankle"] - leg["knee"]) + lift)
    hem_x = 0.5 * (pts[0][:, 0] + pts[1][:, 0])
    spread = 0.5 * np.abs(pts[0][:, 0] - pts[1][:, 0])
    hip_w, hip_d = torso.half_w[:, 1], torso.half_d[:, 1]
    leg_r = s.thigh_r + wear.trousers + coat.thickness
    centres = np.stack([torso.centre[:, 1], pelvis.copy()], 1)
    centres[:, 1, 0] = hem_x
    centres[:, 1, 1] = 0.5 * (pts[0][:, 1] + pts[1][:, 1])
    half_w = np.stack([hip_w, hip_w + 0.04 * coat.looseness * s.height / 1.7], 1)
    reach = coat.flare * (spread + leg_r) + (1 - coat.flare) * 0.8 * hip_d
    half_d = np.stack([hip_d, np.maximum(reach, 0.8 * hip_d)], 1)
    return _chain(centres, half_w, half_d, np.stack([twist, 0.5 * twist], 1))


def _add_bag(s: Subject, wear: Clothes, outfit: Outfit, phase, pelvis, axis, arms, caps, chains):
    bag = outfit.bag
    if bag is None:
        return
    k, side = bag.size, bag.side
    T = len(phase)
    if bag.kind == "backpack":
        back = -(s.chest_d + wear.shirt + 0.09 * k)
        # (position along the torso, half-width, half-depth): top to bottom, rounded ends.
        rings = np.array(
            [(0.95, 0.11, 0.06), (0.88, 0.15, 0.09), (0.48, 0.15, 0.09), (0.42, 0.12, 0.06)]
        )
        pos, w, d = rings.T
        centres = pelvis[:, None, :] + pos[None, :, None] * s.torso * axis + [back, 0.0, 0.0]
        chains.append(
            _chain(centres, np.tile(w * k, (T, 1)), np.tile(d * k, (T, 1)), np.zeros((T, 4)))
        )
    elif bag.kind == "shoulder":
        sway = 0.025 * np.sin(2 * np.pi * phase)[:, None] * np.array([1.0, 0.0, 0.0])
        centre = pelvis + np.array([0.02, 0.02, side * (s.hip_w + wear.shirt + 0.06 * k)]) + sway
        half = np.array([0.11 * k, 0.0, 0.0])
        caps.append((centre - half, centre + half, 0.09 * k, 0.09 * k))
        strap_top = arms[-side]["shoulder"] + np.array([0.0, 0.04, 0.0])
        caps.append((strap_top, centre, 0.012, 0.012))
    elif bag.kind == "hand":
        hand = arms[side]["hand"]
        caps.append((hand, hand - np.array([0.0, 0.12 * k, 0.0]), 0.03 * k, 0.03 * k))
        bottom = hand - np.array([0.0, 0.32 * k, 0.0])
        caps.append((hand - np.array([0.0, 0.12 * k, 0.0]), bottom, 0.10 * k, 0.10 * k))
