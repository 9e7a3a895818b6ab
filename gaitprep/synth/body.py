"""A synthetic walker's persistent identity: body shape and walking style.

Every subject is a pure function of ``(seed, subject id)``: the same pair always gives the same
person, in every view, condition and dataset. Identity lives where it lives in real people: in
body proportions and widths and in the way they move. Height is drawn too, but the standard
preprocessing scales every silhouette to a fixed height, so what survives is shape and motion.

Lengths are in metres, angles in degrees. Anthropometric means follow Drillis & Contini's
segment fractions of stature; the spreads (``SPREAD``) set how different people are, and were
tuned so that a classical GEI baseline lands where it lands on real CASIA-B (``docs/synth.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

#: Relative (or, for angles and fractions, absolute) standard deviations of identity traits.
SPREAD: dict[str, float] = {
    "height": 0.06,  # relative
    "leg": 0.088,  # relative, leg length as a fraction of stature
    "torso": 0.1,  # relative
    "arm": 0.1,  # relative
    "head": 0.175,  # relative
    "build": 0.3,  # relative, all widths together
    "shoulders": 0.2,  # relative
    "chest": 0.2,
    "waist": 0.3,
    "belly": 0.375,
    "hips": 0.2,
    "limbs": 0.25,  # relative, limb thickness
    "stride": 0.2,  # relative
    "cadence": 0.15,  # relative
    "arm_swing": 17.5,  # degrees
    "elbow": 15,  # degrees
    "lean": 7.5,  # degrees
    "head_lean": 12.5,  # degrees
    "knee_swing": 15,  # degrees
    "knee_stance": 10,  # degrees
    "hip_amp": 0.25,  # relative
    "pelvis_twist": 5,  # degrees
    "toe_out": 12.5,  # degrees
    "asym": 0.25,  # relative left/right arm-swing ratio
}


@dataclass(frozen=True)
class Subject:
    """One person: stature, segment lengths, widths and gait style.

    Attributes are grouped as sizes (metres), width multipliers (dimensionless, 1 = average
    adult) and gait parameters (degrees, steps per second, fractions).
    """

    sid: int
    height: float
    # segment lengths (m)
    thigh: float
    shin: float
    ankle: float
    foot: float
    torso: float
    neck: float
    head_r: float
    upper_arm: float
    forearm: float
    hand: float
    # half-widths (lateral) and half-depths (sagittal) of the torso cross-sections (m)
    hip_w: float
    hip_d: float
    waist_w: float
    waist_d: float
    chest_w: float
    chest_d: float
    shoulder_w: float
    limb: float  # limb thickness multiplier
    # gait style
    step_length: float  # metres per step
    cadence: float  # steps per second
    hip_amp: float  # degrees, half range of hip flexion
    knee_stance: float  # degrees, loading-response knee flexion peak
    knee_swing: float  # degrees, swing knee flexion peak
    arm_swing: float  # degrees, shoulder flexion half range
    elbow: float  # degrees, mean elbow flexion
    lean: float  # degrees, forward trunk lean
    head_lean: float  # degrees, forward head tilt
    pelvis_twist: float  # degrees, pelvic rotation half range
    toe_out: float  # degrees
    arm_ratio: float  # right/left arm swing ratio (asymmetry)
    shoulder_drop: float  # m, right shoulder lower than the left (asymmetry)

    @property
    def leg(self) -> float:
        """Hip joint height when standing straight."""
        return self.thigh + self.shin + self.ankle

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def sample_subject(seed: int, sid: int, spread_scale: float = 1.0) -> Subject:
    """Draw subject ``sid`` of the population defined by ``seed``.

    Parameters
    ----------
    seed : int
        Population seed; the same seed and id always give the same subject.
    sid : int
        Subject id (as written in the dataset layout).
    spread_scale : float
        Multiplies every spread in ``SPREAD``: 0 makes everybody the average person.
    """
    rng = _rng(seed, 1, sid)
    s = {k: v * spread_scale for k, v in SPREAD.items()}

    def z() -> float:  # a standard normal draw, truncated at 2.5 SD to avoid absurd bodies
        return float(np.clip(rng.normal(), -2.5, 2.5))

    def rel(name: str) -> float:
        return float(np.exp(z() * s[name]))

    def absn(name: str, mean: float) -> float:
        return mean + z() * s[name]

    h = 1.70 * rel("height")
    leg = rel("leg")
    torso = rel("torso")
    arm = rel("arm")
    build = rel("build")
    limb = rel("limbs") * build**0.5
    stride = rel("stride")
    # Long legs lengthen the step; the walking speed follows from step length and cadence.
    step = 0.41 * h * leg * stride
    return Subject(
        sid=sid,
        height=h,
        thigh=0.245 * h * leg,
        shin=0.246 * h * leg,
        ankle=0.039 * h,
        foot=0.152 * h,
        torso=0.30 * h * torso,
        neck=0.045 * h,
        head_r=0.062 * h * rel("head"),
        upper_arm=0.186 * h * arm,
        forearm=0.146 * h * arm,
        hand=0.09 * h * arm,
        hip_w=0.098 * h * build * rel("hips"),
        hip_d=0.062 * h * build,
        waist_w=0.080 * h * build * rel("waist"),
        waist_d=0.055 * h * build * rel("belly"),
        chest_w=0.088 * h * build * rel("chest"),
        chest_d=0.064 * h * build * rel("chest"),
        shoulder_w=0.118 * h * build**0.5 * rel("shoulders"),
        limb=limb,
        step_length=step,
        cadence=1.85 * rel("cadence"),
        hip_amp=21.0 * rel("hip_amp"),
        knee_stance=absn("knee_stance", 15.0),
        knee_swing=absn("knee_swing", 62.0),
        arm_swing=float(np.clip(absn("arm_swing", 22.0), 4.0, 40.0)),
        elbow=float(np.clip(absn("elbow", 16.0), 2.0, 40.0)),
        lean=absn("lean", 4.0),
        head_lean=absn("head_lean", 5.0),
        pelvis_twist=max(0.0, absn("pelvis_twist", 5.0)),
        toe_out=absn("toe_out", 7.0),
        arm_ratio=rel("asym"),
        shoulder_drop=0.008 * spread_scale * z() * h,
    )


@dataclass(frozen=True)
class Outfit:
    """What a subject wears or carries in one sequence.

    ``bag`` is one of ``None``, ``"backpack"``, ``"shoulder"`` (a shoulder bag at the hip) or
    ``"hand"`` (a hand-held bag); ``bag_size`` scales it; ``bag_side`` is +1 for the left side and
    -1 for the right. ``coat`` (m) is the thickness a coat adds, ``coat_length`` how far (m) its
    hem reaches below the hip joint; both are 0 without a coat.
    """

    bag: str | None = None
    bag_size: float = 1.0
    bag_side: int = 1
    coat: float = 0.0
    coat_length: float = 0.0


BAGS = ("backpack", "shoulder", "hand")


def outfit_for(seed: int, subject: Subject, condition: str, seq: int) -> Outfit:
    """The outfit of ``subject`` in sequence ``condition``-``seq``.

    ``nm`` is plain clothing. ``bg`` carries a bag: the subject owns two different bags, one for
    ``bg-01`` and one for ``bg-02``. ``cl`` wears the subject's coat (the same in both ``cl``
    sequences, as in CASIA-B where people wore their own coats).
    """
    rng = _rng(seed, 2, subject.sid)
    kinds = rng.permutation(len(BAGS))
    sizes = np.exp(rng.normal(0.0, 0.2, size=2))
    sides = rng.choice([-1, 1], size=2)
    coat = float(rng.uniform(0.025, 0.06)) * subject.height / 1.7
    coat_length = float(rng.uniform(0.35, 0.85)) * subject.thigh + 0.15 * subject.hip_d
    if condition == "bg":
        i = (seq - 1) % 2
        return Outfit(bag=BAGS[kinds[i]], bag_size=float(sizes[i]), bag_side=int(sides[i]))
    if condition == "cl":
        return Outfit(coat=coat, coat_length=coat_length)
    return Outfit()
