"""Fill a posed figure, seen by a camera, as binary silhouettes (0 background, 255 body).

Capsules project to the hull of two discs (two circles and the quad between them); a ring chain
projects to the polygon through its rings' extreme points as seen along the line of sight.
Coordinates are rounded to 1/16 pixel (OpenCV's ``shift=4``) so that small parts move smoothly.
"""

from __future__ import annotations

import cv2
import numpy as np

from gaitprep.synth.camera import Camera, to_world
from gaitprep.synth.geometry import Figure, RingChain

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fixed(a: np.ndarray) -> np.ndarray:
    return np.round(a * _ONE).astype(np.int32)


def _capsule_outlines(fig: Figure, cam: Camera, axes, origin):
    caps = fig.capsules
    (ua, za), (ub, zb) = (
        cam.project(to_world(caps.a, axes, origin)),
        cam.project(to_world(caps.b, axes, origin)),
    )
    ra = cam.focal * caps.ra / za
    rb = cam.focal * caps.rb / zb
    d = ub - ua
    n = (
        np.stack([-d[..., 1], d[..., 0]], -1)
        / np.maximum(np.linalg.norm(d, axis=-1), 1e-6)[..., None]
    )
    quads = np.stack(
        [
            ua + n * ra[..., None],
            ub + n * rb[..., None],
            ub - n * rb[..., None],
            ua - n * ra[..., None],
        ],
        -2,
    )
    return _fixed(quads), _fixed(ua), _fixed(ub), _fixed(ra), _fixed(rb)


def _chain_outline(chain: RingChain, cam: Camera, axes, origin) -> np.ndarray:
    centre = to_world(chain.centre, axes, origin)
    lateral = chain.lateral @ axes
    forward = chain.forward @ axes
    ray = centre.copy()
    ray[..., 1] = 0.0
    e = np.stack([ray[..., 2], np.zeros_like(ray[..., 0]), -ray[..., 0]], -1)
    e /= np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-9)
    w = np.hypot(chain.half_w * (lateral * e).sum(-1), chain.half_d * (forward * e).sum(-1))
    left, _ = cam.project(centre - w[..., None] * e)
    right, _ = cam.project(centre + w[..., None] * e)
    return _fixed(np.concatenate([left, right[:, ::-1]], 1))  # [T, 2R, 2]


def rasterize(fig: Figure, cam: Camera, axes: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Render ``fig`` placed by ``axes`` (walk_axes) at per-frame ``origin`` [T, 3].

    Returns uint8 silhouettes [T, H, W] with values 0 and 255.
    """
    quads, ua, ub, ra, rb = _capsule_outlines(fig, cam, axes, origin)
    polys = [_chain_outline(c, cam, axes, origin) for c in fig.chains]
    T = origin.shape[0]
    out = np.zeros((T, cam.height_px, cam.width), np.uint8)
    ua_l, ub_l, ra_l, rb_l = ua.tolist(), ub.tolist(), ra.tolist(), rb.tolist()
    for t in range(T):
        img = out[t]
        for poly in polys:
            cv2.fillPoly(img, [poly[t]], 255, cv2.LINE_8, _SHIFT)
        for i in range(quads.shape[1]):
            cv2.fillConvexPoly(img, quads[t, i], 255, cv2.LINE_8, _SHIFT)
            cv2.circle(img, ua_l[t][i], ra_l[t][i], 255, -1, cv2.LINE_8, _SHIFT)
            cv2.circle(img, ub_l[t][i], rb_l[t][i], 255, -1, cv2.LINE_8, _SHIFT)
    return out
