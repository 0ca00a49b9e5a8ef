"""The principal components of a subject's training expressions: the viewer's expression sliders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

NUM_COMPONENTS = 8
"""Principal components of the training expressions offered as sliders."""
MIN_EXPLAINED = 0.005
"""Components explaining less than this share of the variance get no slider."""


@dataclass
class ExpressionPCA:
    """Principal components of a set of expression codes."""

    mean: Float[Tensor, " D"]
    components: Float[Tensor, "K D"]
    """Unit directions, largest variance first."""
    std: Float[Tensor, " K"]
    """Standard deviation of the codes along each component."""
    explained: Float[Tensor, " K"]
    """Fraction of the total variance each component explains."""


def expression_pca(codes: Float[Tensor, "N D"], num_components: int = NUM_COMPONENTS) -> ExpressionPCA:
    """PCA of ``codes`` (float64 SVD); components with no variance are dropped."""
    x = codes.detach().double().cpu()
    mean = x.mean(dim=0)
    n, dim = x.shape
    if n < 2:
        empty = torch.zeros(0, dtype=torch.float32)
        return ExpressionPCA(mean.float(), torch.zeros(0, dim), empty, empty)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (n - 1)
    total = float(var.sum())
    keep = int((var > total * MIN_EXPLAINED).sum()) if total > 0 else 0
    keep = min(keep, num_components)
    return ExpressionPCA(
        mean=mean.float(),
        components=vh[:keep].float(),
        std=var[:keep].sqrt().float(),
        explained=(var[:keep] / max(total, 1e-30)).float(),
    )
