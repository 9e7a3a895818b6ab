"""What a synthetic walker wears and carries: everyday clothes, a coat, bags.

Everything here belongs to the subject, drawn once from ``(seed, subject id)``, as in CASIA-B,
where people came in their own clothes: the same trousers, shoes and hair in every recording,
their own coat in ``cl`` and two different bags in ``bg-01`` and ``bg-02``. Clothing matters for
the silhouette in two ways: it adds volume everywhere (a bare anthropometric body is far thinner
than a dressed person), and a coat replaces the body's own outline with the coat's cut, which is
what makes the clothing condition hard.

Sizes are in metres, drawn uniformly between the bounds given in each field's comment and scaled
with stature.
"""

from __future__ import annotations

from dataclasses import dataclass

from gaitprep.synth.body import Subject, rng_for

BAGS = ("backpack", "shoulder", "hand")


@dataclass(frozen=True)
class Clothes:
    """Everyday clothes, worn in every condition."""

    shirt: float  # 0.003-0.015: added to the torso's half-widths and half-depths
    sleeve: float  # 0.005-0.02: added to the upper arm (and the forearm with long sleeves)
    long_sleeves: bool  # 60 % of subjects
    trousers: float  # 0.005-0.045: added to the thigh's radius
    hem: float  # 0.04-0.085: radius of the trouser leg at the ankle (the shank is at least this)
    sole: float  # 0.015-0.035: shoe sole and upper, added to the foot's radius
    toe: float  # 0.02-0.05: shoe length beyond the toes
    hair: float  # 0.0-0.04: hair volume on top of and behind the head
    long_hair: float  # 0 (75 % of subjects) or 0.08-0.3: hair hanging below the back of the head


@dataclass(frozen=True)
class Coat:
    """The subject's coat, worn in both ``cl`` recordings."""

    thickness: float  # 0.02-0.05: fabric and lining, added everywhere it covers
    looseness: float  # 0.5-1.0: how far its straight cut replaces the body's own outline
    length: float  # 0.5-1.3 thigh lengths: how far the hem reaches below the hip joint
    flare: float  # 0.3-1.0: how far the hem swings out with the legs
    collar: float  # 0.0-0.04: added around the neck
    sleeve: float  # 0.01-0.03: added to both arm segments on top of the thickness


@dataclass(frozen=True)
class Bag:
    """A carried bag: its kind (``BAGS``), a size factor and the side (+1 left, -1 right)."""

    kind: str
    size: float
    side: int


@dataclass(frozen=True)
class Outfit:
    """What a subject wears in one sequence: clothes always, a coat or a bag sometimes."""

    clothes: Clothes
    coat: Coat | None = None
    bag: Bag | None = None


def clothes_for(seed: int, subject: Subject) -> Clothes:
    """The everyday clothes of ``subject`` (the same in every recording)."""
    rng = rng_for(seed, 4, subject.sid)
    k = subject.height / 1.70

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi)) * k

    long_hair = rng.uniform() < 0.25
    return Clothes(
        shirt=u(0.003, 0.015),
        sleeve=u(0.005, 0.02),
        long_sleeves=bool(rng.uniform() < 0.6),
        trousers=u(0.005, 0.045),
        hem=u(0.04, 0.085),
        sole=u(0.015, 0.035),
        toe=u(0.02, 0.05),
        hair=u(0.0, 0.04),
        long_hair=u(0.08, 0.3) if long_hair else 0.0,
    )


def coat_for(seed: int, subject: Subject) -> Coat:
    """The coat ``subject`` wears in ``cl``."""
    rng = rng_for(seed, 2, subject.sid)
    k = subject.height / 1.70
    return Coat(
        thickness=float(rng.uniform(0.02, 0.05)) * k,
        looseness=float(rng.uniform(0.5, 1.0)),
        length=float(rng.uniform(0.5, 1.3)) * subject.thigh,
        flare=float(rng.uniform(0.3, 1.0)),
        collar=float(rng.uniform(0.0, 0.04)) * k,
        sleeve=float(rng.uniform(0.01, 0.03)) * k,
    )


def bags_for(seed: int, subject: Subject) -> tuple[Bag, Bag]:
    """The two different bags ``subject`` carries in ``bg-01`` and ``bg-02``."""
    rng = rng_for(seed, 5, subject.sid)
    kinds = rng.permutation(len(BAGS))
    sizes = rng.lognormal(0.0, 0.2, size=2)
    sides = rng.choice([-1, 1], size=2)
    return tuple(Bag(BAGS[kinds[i]], float(sizes[i]), int(sides[i])) for i in range(2))


def outfit_for(seed: int, subject: Subject, condition: str, seq: int) -> Outfit:
    """The outfit of ``subject`` in sequence ``condition``-``seq``.

    ``nm`` is everyday clothes. ``bg`` adds a bag: ``bg-01`` the first of the subject's two bags,
    ``bg-02`` the second. ``cl`` adds the subject's coat.

    Examples
    --------
    >>> from gaitprep.synth.body import sample_subject
    >>> s = sample_subject(0, 4)
    >>> outfit_for(0, s, "bg", 1).bag.kind != outfit_for(0, s, "bg", 2).bag.kind
    True
    >>> outfit_for(0, s, "nm", 1).clothes == outfit_for(0, s, "cl", 2).clothes
    True
    """
    clothes = clothes_for(seed, subject)
    if condition == "bg":
        return Outfit(clothes, bag=bags_for(seed, subject)[(seq - 1) % 2])
    if condition == "cl":
        return Outfit(clothes, coat=coat_for(seed, subject))
    return Outfit(clothes)
