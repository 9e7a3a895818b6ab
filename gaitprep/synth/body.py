"""A synthetic walker's persistent identity: body size and shape, and walking style.

Every subject is a pure function of ``(seed, subject id)``: the same pair always gives the same
person, in every view, condition and dataset. Identity lives where it lives in real people: in
body proportions and girths and in the way they move. Height is drawn too, but the standard
preprocessing scales every silhouette to a fixed height, so what survives is shape and motion.

Lengths are in metres, angles in degrees. Segment lengths follow Drillis & Contini's fractions of
stature; breadths, depths and girths follow adult anthropometric survey means (``ANTHRO``, cited
in ``docs/synth.md``), all scaled with stature. The spreads (``SPREAD``) set how different people
are; with clothing (:mod:`gaitprep.synth.clothing`) carrying part of the identity signal, as it
does in real recordings, they were tuned so that a classical GEI baseline lands where it lands on
real CASIA-B (``docs/synth.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

#: Mean body dimensions of adults (men and women averaged, rounded to 0.5 cm; ANSUR II,
#: Gordon et al. 2014) as fractions of a 1.70 m stature. Breadths and depths are full sizes,
#: girths are circumferences; the body model uses half-sizes and radii (girth / 2π).
ANTHRO: dict[str, float] = {
    "head_length": 0.192 / 1.70,  # glabella to back of the head
    "head_breadth": 0.150 / 1.70,
    "neck_girth": 0.355 / 1.70,
    "chest_breadth": 0.315 / 1.70,
    "chest_depth": 0.245 / 1.70,
    "waist_breadth": 0.310 / 1.70,
    "waist_depth": 0.235 / 1.70,
    "hip_breadth": 0.360 / 1.70,
    "buttock_depth": 0.245 / 1.70,
    "biacromial_breadth": 0.385 / 1.70,
    "thigh_girth": 0.625 / 1.70,  # at the gluteal fold
    "lower_thigh_girth": 0.405 / 1.70,  # just above the knee
    "calf_girth": 0.385 / 1.70,
    "ankle_girth": 0.220 / 1.70,
    "upper_arm_girth": 0.300 / 1.70,  # relaxed
    "forearm_girth": 0.260 / 1.70,  # relaxed
    "wrist_girth": 0.165 / 1.70,
}

#: Relative (or, for angles and fractions, absolute) standard deviations of identity traits.
SPREAD: dict[str, float] = {
    "height": 0.06,  # relative
    "leg": 0.088,  # relative, leg length as a fraction of stature
    "torso": 0.1,  # relative
    "arm": 0.1,  # relative
    "head": 0.175,  # relative
    "build": 0.2,  # relative, all widths together
    "shoulders": 0.1,  # relative
    "chest": 0.1,
    "waist": 0.25,
    "belly": 0.3,
    "hips": 0.1,
    "limbs": 0.15,  # relative, limb thickness
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
    """One person: stature, segment lengths, girths and gait style.

    Attributes are grouped as segment lengths, torso half-widths (lateral) and half-depths
    (sagittal), head and limb radii (all metres), and gait parameters (degrees, steps per
    second, fractions).
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
    head_h: float  # half the head's height, chin to vertex
    upper_arm: float
    forearm: float
    hand: float
    # torso cross-sections (m)
    hip_w: float
    hip_d: float
    waist_w: float
    waist_d: float
    chest_w: float
    chest_d: float
    shoulder_w: float
    # head and limb radii (m)
    head_w: float  # half breadth
    head_d: float  # half length
    neck_r: float
    thigh_r: float
    knee_r: float
    calf_r: float
    ankle_r: float
    arm_r: float
    forearm_r: float
    wrist_r: float
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


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream for ``key`` within the population ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def truncated_normal(rng: np.random.Generator) -> float:
    """A standard normal draw truncated at 2.5 SD, to avoid absurd bodies."""
    return float(np.clip(rng.normal(), -2.5, 2.5))


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

    Examples
    --------
    >>> s = sample_subject(0, 1, spread_scale=0.0)
    >>> round(s.height, 2), round(2 * s.head_d, 3), round(2 * np.pi * s.thigh_r, 3)
    (1.7, 0.192, 0.625)
    """
    rng = rng_for(seed, 1, sid)
    s = {k: v * spread_scale for k, v in SPREAD.items()}

    def rel(name: str) -> float:
        return float(np.exp(truncated_normal(rng) * s[name]))

    def absn(name: str, mean: float) -> float:
        return mean + truncated_normal(rng) * s[name]

    h = 1.70 * rel("height")
    leg = rel("leg")
    torso = rel("torso")
    arm = rel("arm")
    build = rel("build")
    limb = rel("limbs") * build**0.5
    stride = rel("stride")
    head = rel("head")
    # Long legs lengthen the step; the walking speed follows from step length and cadence.
    step = 0.41 * h * leg * stride
    a = {k: v * h for k, v in ANTHRO.items()}
    girth = limb / (2 * np.pi)
    return Subject(
        sid=sid,
        height=h,
        thigh=0.245 * h * leg,
        shin=0.246 * h * leg,
        ankle=0.039 * h,
        foot=0.152 * h,
        torso=0.30 * h * torso,
        neck=0.045 * h,
        head_h=0.068 * h * head,
        upper_arm=0.186 * h * arm,
        forearm=0.146 * h * arm,
        hand=0.09 * h * arm,
        hip_w=0.5 * a["hip_breadth"] * build * rel("hips"),
        hip_d=0.5 * a["buttock_depth"] * build,
        waist_w=0.5 * a["waist_breadth"] * build * rel("waist"),
        waist_d=0.5 * a["waist_depth"] * build * rel("belly"),
        chest_w=0.5 * a["chest_breadth"] * build * rel("chest"),
        chest_d=0.5 * a["chest_depth"] * build * rel("chest"),
        shoulder_w=0.52 * a["biacromial_breadth"] * build**0.5 * rel("shoulders"),
        head_w=0.5 * a["head_breadth"] * head,
        head_d=0.5 * a["head_length"] * head,
        neck_r=a["neck_girth"] / (2 * np.pi) * build**0.5,
        thigh_r=a["thigh_girth"] * girth,
        knee_r=a["lower_thigh_girth"] * girth,
        calf_r=a["calf_girth"] * girth,
        ankle_r=a["ankle_girth"] * girth,
        arm_r=a["upper_arm_girth"] * girth,
        forearm_r=a["forearm_girth"] * girth,
        wrist_r=a["wrist_girth"] * girth,
        step_length=step,
        cadence=1.85 * rel("cadence"),
        hip_amp=21.0 * rel("hip_amp"),
        knee_stance=absn("knee_stance", 15.0),
        knee_swing=absn("knee_swing", 62.0),
        arm_swing=float(np.clip(absn("arm_swing", 18.0), 4.0, 40.0)),
        elbow=float(np.clip(absn("elbow", 16.0), 2.0, 40.0)),
        lean=absn("lean", 4.0),
        head_lean=absn("head_lean", 5.0),
        pelvis_twist=max(0.0, absn("pelvis_twist", 5.0)),
        toe_out=absn("toe_out", 7.0),
        arm_ratio=rel("asym"),
        shoulder_drop=0.008 * spread_scale * truncated_normal(rng) * h,
    )
