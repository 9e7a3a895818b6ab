"""The geometry of a batch of part features, the same for every loss: what a loss sees.

Per part, on the L2-normalized features f̂ (distances in [0, 2], so that losses on raw and on
normalized features compare), with c_i the mean of the normalized features of sample i's class in
the batch:

- ``own_center``: the mean of d(f̂_i, c_i), a sample's distance to its own class center;
- ``other_center``: the mean of d(f̂_i, c_j) over the samples j of the other classes (each class
  weighs as its samples in the batch: equally under P×K sampling);
- ``pos_pair`` and ``neg_pair``: the mean distance of the positive pairs (same class, i ≠ j) and of
  the negative pairs;
- ``center_to_pair``: own_center / pos_pair. For K samples of a class spread independently around
  its mean, E d(x, c)² / E d(x, x')² = (K − 1) / 2K, so this is about √((K − 1) / 2K), 0.61 at
  K = 4: a center-anchored positive boundary sits closer than the sample-pair one;
- ``norm``: the mean norm of the raw features ‖f_i‖ (the scale a raw-feature loss works at).

All means are over every part; nan where a set is empty (a batch of one class has no negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gaittrain.losses._common import check_inputs, masked_mean, pair_masks, pairwise_distance


@torch.no_grad()
def batch_geometry(features: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The batch's distances (module docstring) as scalar tensors, without a host synchronization.

    Args:
        features: ``[parts, batch, dim]``, raw (as the model gives them).
        labels: int64 ``[batch]``.

    Examples:
        >>> features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
        >>> stats = batch_geometry(features, torch.tensor([0, 0, 1, 1]))
        >>> round(stats["pos_pair"].item(), 4), round(stats["own_center"].item(), 4)
        (1.4142, 0.7071)
    """
    check_inputs(features, labels)
    norm = features.float().norm(dim=-1).mean()
    features = F.normalize(features.float(), dim=-1)
    same = labels[:, None] == labels[None, :]
    members = same.to(features.dtype)
    centers = members @ features / members.sum(1, keepdim=True)  # c_i, one per sample
    to_center = pairwise_distance(features, centers)  # [parts, batch, batch]: d(f̂_i, c_j)
    dist = pairwise_distance(features, features)
    pos, neg = pair_masks(labels)
    own = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    own_center = masked_mean(to_center, own)
    pos_pair = masked_mean(dist, pos)
    return {
        "own_center": own_center,
        "other_center": masked_mean(to_center, neg),
        "pos_pair": pos_pair,
        "neg_pair": masked_mean(dist, neg),
        "center_to_pair": own_center / pos_pair,
        "norm": norm,
    }
