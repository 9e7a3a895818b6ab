"""``gait synth``: procedural raw silhouette sequences in the real datasets' layouts.

The pieces, in the order the data flows: :mod:`body` (who walks), :mod:`clothing` (what they
wear and carry), :mod:`kinematics` (how the joints move), :mod:`geometry` (the posed 3D body),
:mod:`camera` (where it is seen from), :mod:`raster` (the binary silhouette), :mod:`artifacts`
(segmentation noise), :mod:`sequence` (one recording), :mod:`layouts` (file names) and
:mod:`writer` (the whole tree on disk).
"""

from gaitprep.synth.artifacts import Artifacts
from gaitprep.synth.layouts import CASIA_B, LAYOUTS, OU_MVLP, Layout, parse_subjects
from gaitprep.synth.sequence import SequenceSpec, render_sequence
from gaitprep.synth.writer import SynthError, SynthJob, summarize, synthesize

__all__ = [
    "Artifacts",
    "CASIA_B",
    "LAYOUTS",
    "OU_MVLP",
    "Layout",
    "SequenceSpec",
    "SynthError",
    "SynthJob",
    "parse_subjects",
    "render_sequence",
    "summarize",
    "synthesize",
]
