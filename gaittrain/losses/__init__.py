"""Part-wise losses for gait models: features [parts, batch, dim] and labels [batch] in, scalar out.

Each loss is a ``torch.nn.Module``; a call makes no host synchronization, and its ``stats``
property gives the statistics of the last call as Python floats, converted when it is read (see
docs/losses.md).
"""

from gaittrain.losses.center_ranked import CenterRankedLoss
from gaittrain.losses.cross_entropy import LogitCrossEntropyLoss, PartCrossEntropyLoss
from gaittrain.losses.ranked_list import RankedListLoss
from gaittrain.losses.triplet import TripletLoss

__all__ = [
    "CenterRankedLoss",
    "LogitCrossEntropyLoss",
    "PartCrossEntropyLoss",
    "RankedListLoss",
    "TripletLoss",
]
