"""Joint-angle curves of one gait cycle, close to normal human walking.

Phase 0 is the heel strike of the leg in question and 1 the next one. The curves are smooth,
periodic approximations of the sagittal-plane angles in Winter's gait data: the hip flexes about
+30° at heel strike and extends to about -10° at toe-off; the knee shows a small loading-response
flexion (~15° at 15 % of the cycle) and a large swing flexion (~60° at 72 %); the ankle
plantar-flexes at push-off; the arms swing in antiphase with the legs.
"""

from __future__ import annotations

import numpy as np


def _bump(phase: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A periodic Gaussian bump of unit height centred at ``centre`` (phase units)."""
    d = (phase - centre + 0.5) % 1.0 - 0.5
    return np.exp(-0.5 * (d / width) ** 2)


def hip_flexion(phase: np.ndarray, amp: float) -> np.ndarray:
    """Thigh angle from vertical, positive forward (degrees)."""
    w = 2 * np.pi * phase
    return 9.0 + amp * np.cos(w - 0.25) + 0.12 * amp * np.cos(2 * w)


def knee_flexion(phase: np.ndarray, stance: float, swing: float) -> np.ndarray:
    """Knee flexion, 0 = straight leg, positive = shank behind the thigh (degrees)."""
    return 3.0 + stance * _bump(phase, 0.14, 0.07) + swing * _bump(phase, 0.72, 0.10)


def ankle_dorsiflexion(phase: np.ndarray) -> np.ndarray:
    """Foot angle relative to the shank's normal, positive = toes up (degrees)."""
    return 4.0 + 8.0 * _bump(phase, 0.45, 0.08) - 18.0 * _bump(phase, 0.62, 0.05)


def shoulder_flexion(phase: np.ndarray, amp: float) -> np.ndarray:
    """Upper-arm angle from vertical, positive forward (degrees).

    ``phase`` is the phase of the same-side leg; the arm swings forward while that leg swings
    back.
    """
    return -3.0 - amp * np.cos(2 * np.pi * phase - 0.35)


def elbow_flexion(phase: np.ndarray, mean: float) -> np.ndarray:
    """Elbow flexion (degrees); the elbow bends more as the arm swings forward."""
    return mean * (1.0 + 0.6 * np.cos(2 * np.pi * phase - 0.35 + np.pi))


def pelvis_rotation(phase: np.ndarray, amp: float) -> np.ndarray:
    """Pelvic rotation about the vertical axis, positive turns the left hip forward (degrees).

    ``phase`` is the right leg's; the right hip is forward at right heel strike.
    """
    return -amp * np.cos(2 * np.pi * phase)
