"""Per-class loss statistics behind the semantic sampler: moving average, all-reduce, class probabilities.

The probability of a class follows its recent loss (per-ray RGB MSE + semantic CE, coarse and fine,
averaged over the class's rays), multiplied by a per-class weight (mouth interior and lips x2),
normalised, and mixed with a floor so that no class ever starves. Unlike the published code, which
recomputes the probabilities from the last batch only (a class absent from one batch gets
probability 0 forever), the loss of each class is an exponential moving average that a class keeps
while it is absent. With several processes the batch sums are all-reduced first, so every rank holds
the same average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor, nn

from sahs_nerfstudio.data.semantics import CLASS_NAMES, MOUTH_CLASSES, NUM_CLASSES

DEFAULT_CLASS_WEIGHTS: tuple[float, ...] = tuple(2.0 if c in MOUTH_CLASSES else 1.0 for c in range(NUM_CLASSES))
"""Mouth interior and lips count twice, as in the published method."""


def class_log_name(cls: int) -> str:
    """Scalar name of a class's probability, e.g. ``sampler/p_mouth_interior``."""
    return "sampler/p_" + CLASS_NAMES[cls].replace(" ", "_").replace("/", "_")


def class_probabilities(
    mean_loss: Float[Tensor, " K"],
    seen: Tensor,
    class_weights: Sequence[float] = DEFAULT_CLASS_WEIGHTS,
    min_probability: float = 0.01,
) -> Float[Tensor, " K"]:
    """Class probabilities from per-class mean losses: ``floor + (1 - K floor) * w*l / sum(w*l)``.

    Classes never seen get the largest seen loss (so they are explored once they show up). With no
    class seen, or all weighted losses zero, the result is uniform over classes (or proportional to
    the weights). Always finite, sums to 1, and every entry is >= ``min_probability``.
    """
    k = mean_loss.shape[0]
    if not 0.0 <= min_probability <= 1.0 / k:
        raise ValueError(f"min_probability must be in [0, 1/{k}], got {min_probability}")
    weights = torch.as_tensor(class_weights, dtype=torch.float64, device=mean_loss.device)
    seen = seen.bool() & torch.isfinite(mean_loss)
    if not bool(seen.any()):
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=mean_loss.device)
    loss = mean_loss.double().clamp(min=0.0)
    loss = torch.where(seen, loss, loss[seen].max())
    score = weights * loss
    total = score.sum()
    if not bool(total > 0):
        score = weights if bool(weights.sum() > 0) else torch.ones_like(weights)
        total = score.sum()
    return min_probability + (1.0 - k * min_probability) * score / total


class ClassLossEMA(nn.Module):
    """Per-class moving average of the mean per-ray loss; persistent buffers, so checkpoints keep it.

    A class absent from a batch keeps its average (it neither decays nor drops to zero); the first
    batch that contains a class sets its average directly.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.register_buffer("mean_loss", torch.zeros(num_classes))
        self.register_buffer("num_updates", torch.zeros(num_classes, dtype=torch.long))

    mean_loss: Tensor
    num_updates: Tensor

    @property
    def seen(self) -> Tensor:
        return self.num_updates > 0

    @torch.no_grad()
    def update(self, loss_sum: Float[Tensor, " K"], loss_count: Float[Tensor, " K"], decay: float) -> None:
        """Fold in one batch: classes with rays get ``decay * old + (1 - decay) * batch mean``."""
        loss_sum = loss_sum.detach().to(self.mean_loss.device, torch.float32)
        loss_count = loss_count.detach().to(self.mean_loss.device, torch.float32)
        batch_mean = loss_sum / loss_count.clamp(min=1.0)
        present = (loss_count > 0) & torch.isfinite(batch_mean)
        first = present & ~self.seen
        blended = decay * self.mean_loss + (1.0 - decay) * batch_mean
        new = torch.where(first, batch_mean, torch.where(present, blended, self.mean_loss))
        self.mean_loss.copy_(new)
        self.num_updates.add_(present.long())

    def probabilities(self, class_weights: Sequence[float], min_probability: float) -> Float[Tensor, " K"]:
        return class_probabilities(self.mean_loss, self.seen, class_weights, min_probability)


def all_reduce_class_stats(
    loss_sum: Float[Tensor, " K"], loss_count: Float[Tensor, " K"]
) -> tuple[Float[Tensor, " K"], Float[Tensor, " K"]]:
    """Sum the batch statistics over all processes (a no-op without an initialised process group).

    Every rank must call it once per step (it is a collective).
    """
    stats = torch.stack([loss_sum.detach().float(), loss_count.detach().float()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats[0], stats[1]
