"""Part-wise losses for gait models: features [parts, batch, dim] and labels [batch] in, scalar out.

Each loss is a ``torch.nn.Module`` whose ``stats`` attribute holds, after every call, the
statistics of that call as Python floats (see docs/losses.md).
"""

from gaittrain.losses.center_ranked import CenterRankedLoss
from gaittrain.losses.cross_entropy import PartCrossEntropyLoss
from gaittrain.losses.ranked_list import RankedListLoss
from gaittrain.losses.triplet import TripletLoss

__all__ = ["CenterRankedLoss", "PartCrossEntropyLoss", "RankedListLoss", "TripletLoss"]
