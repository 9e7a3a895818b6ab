"""The standard per-frame normalization on hand-built frames."""

from __future__ import annotations

import numpy as np
import pytest

from gaitprep.normalize import TOO_SMALL, largest_component, normalize_frame


def test_small_frames_are_dropped_with_a_reason() -> None:
    img = np.zeros((240, 320), np.uint8)
    img[100:105, 100:108] = 255  # 40 pixels: grey sum 10200 > 10000, kept
    assert normalize_frame(img)[1] is None
    img[104, 100:108] = 0  # 32 pixels: 8160 <= 10000, dropped
    frame, reason = normalize_frame(img)
    assert frame is None and reason == TOO_SMALL


def test_rectangle_is_scaled_to_full_height_and_centred() -> None:
    img = np.zeros((240, 320), np.uint8)
    img[40:200, 150:190] = 255  # 160 x 40 block
    out, _ = normalize_frame(img, size=64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    cols = np.flatnonzero(out.max(0) > 127)
    assert len(cols) == 16  # width 40 * 64/160
    assert abs((cols[0] + cols[-1]) / 2 - 31.5) <= 1  # centred in the window
    assert (out[:, cols[2]] > 127).all()  # spans the full height


def test_centre_in_column_zero_is_valid() -> None:
    img = np.zeros((100, 50), np.uint8)
    img[:, 0] = 255
    img[0, 1] = 255  # enough mass, but almost all of it in column 0
    img = np.repeat(img, 2, axis=0)
    out, reason = normalize_frame(img, size=64)
    assert reason is None
    assert out[:, 32].max() > 127  # column 0 lands in the middle of the window
    assert not out[:, :32].any()  # zero padding on the left


def test_largest_blob_removes_specks_that_stretch_the_crop() -> None:
    img = np.zeros((240, 320), np.uint8)
    img[80:200, 150:180] = 255
    img[5:7, 10:12] = 255  # a speck far above the body
    stretched, _ = normalize_frame(img)
    clean, _ = normalize_frame(img, largest_blob=True)
    assert (clean > 127).any(1).all()  # the body fills every row again
    assert not (stretched > 127).any(1).all()
    assert largest_component(img)[5, 10] == 0


def test_binarize() -> None:
    img = np.zeros((240, 320), np.uint8)
    img[40:200, 150:191] = 255
    out, _ = normalize_frame(img, binarize=True)
    assert set(np.unique(out)) <= {0, 255}


@pytest.mark.slow
def test_equals_the_literal_steps_on_every_sample_frame() -> None:
    from pathlib import Path

    import cv2

    from tests.reference import reference_normalize

    root = Path(__file__).resolve().parents[1] / "sample_data" / "casia-b"
    files = sorted(root.rglob("*.png"))
    assert len(files) == 2160
    for size in (64, 128):
        for f in files[::3] if size == 128 else files:
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            fast, _ = normalize_frame(img, size=size)
            slow = reference_normalize(img, size=size)
            if slow is None:
                assert fast is None, f
            else:
                np.testing.assert_array_equal(fast, slow, err_msg=str(f))
