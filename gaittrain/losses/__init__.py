"""Part-wise losses for gait models: features [parts, batch, dim] and labels [batch] in, scalar out.

Each loss is a ``torch.nn.Module``; a call makes no host synchronization, and its ``stats``
property gives the statistics of the last call as Python floats, converted when it is read (see
docs/losses.md).
"""

from gaittrain.losses.center_ranked import CenterRankedLoss
from gaittrain.losses.cross_entropy import LogitCrossEntropyLoss, PartCrossEntropyLoss
from gaittrain.losses.ranked_list import RankedListLoss
from gaittrain.losses.triplet import TripletLoss

#: The metric losses, by ``loss.name``: the one list. Each class owns its config section
#: (``Loss.Config``: keys, defaults, ranges) and builds itself from it (``Loss.from_config``).
#: The first is the default loss. Adding a loss: a module here, and its class in this list.
METRIC_LOSSES: dict[str, type] = {
    cls.Config.name: cls for cls in (CenterRankedLoss, TripletLoss, RankedListLoss)
}

__all__ = [
    "METRIC_LOSSES",
    "CenterRankedLoss",
    "LogitCrossEntropyLoss",
    "PartCrossEntropyLoss",
    "RankedListLoss",
    "TripletLoss",
]
