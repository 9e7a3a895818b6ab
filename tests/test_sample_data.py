"""The committed sample_data/ tree is what its README's command makes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gaitprep.synth import CASIA_B, Artifacts, SequenceSpec, render_sequence

ROOT = Path(__file__).resolve().parents[1] / "sample_data" / "casia-b"


@pytest.mark.slow
def test_sample_data_matches_its_command() -> None:
    job = json.loads((ROOT / ".gait-synth.json").read_text())["job"]
    assert job["dataset"] == "casia-b" and job["seed"] == 0
    assert job["artifacts"] == Artifacts().as_dict()
    sequences = 0
    for sid in job["subjects"]:
        for recording in job["recordings"]:
            cond, nn = recording.split("-")
            for view in job["views"]:
                folder = ROOT / CASIA_B.sequence_dir(sid, cond, int(nn), view)
                files = sorted(folder.glob("*.png"))
                assert len(files) == job["frames"], folder
                stored = np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files])
                spec = SequenceSpec(
                    "casia-b",
                    sid,
                    cond,
                    int(nn),
                    view,
                    job["frames"],
                    *job["size"],
                    job["seed"],
                    Artifacts(),
                )
                np.testing.assert_array_equal(stored, render_sequence(spec), err_msg=str(folder))
                sequences += 1
    assert sequences == 6 * 10 * 3
