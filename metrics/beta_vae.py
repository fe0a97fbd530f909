"""BetaVAE score (Higgins et al. 2017), disentanglement_lib's protocol, batched.

A sample: pick a factor k uniformly, draw ``batch_size`` pairs of factor rows
that share factor k, encode both images of every pair, and average
|r(x1) - r(x2)| over the batch: a feature [D] labelled k. A logistic
regression (scikit-learn defaults) is fit on ``num_train`` samples and
scored on ``num_eval`` fresh ones; the eval accuracy is the score.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    Represent,
    check_factor_sizes,
    check_ground_truth,
    encode_groups,
    make_generator,
    render_generator,
    resolve_device,
)


@dataclasses.dataclass(frozen=True)
class BetaVAEResult(MetricResult):
    score: float  # = eval_accuracy
    train_accuracy: float
    eval_accuracy: float


def _features(
    data: Any,
    represent: Represent,
    num_samples: int,
    batch_size: int,
    gen: torch.Generator,
    chunk_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [V, D] float64, labels [V]) of ``num_samples`` fresh samples."""
    k = torch.randint(0, len(data.factor_sizes), (num_samples,), generator=gen, device=gen.device)
    first = data.sample_factors(num_samples * batch_size, gen).view(num_samples, batch_size, -1)
    second = data.sample_factors(num_samples * batch_size, gen).view(num_samples, batch_size, -1)
    index = k.view(-1, 1, 1).expand(-1, batch_size, 1).to(first.device)
    second.scatter_(2, index, first.gather(2, index))
    rows = torch.cat([first, second], dim=1)  # [V, 2B, K]: both images of every pair in one group

    def feature(codes: torch.Tensor) -> torch.Tensor:
        codes = codes.double()
        return (codes[:, :batch_size] - codes[:, batch_size:]).abs().mean(dim=1)

    feats = encode_groups(data, represent, rows, feature, render_generator(gen), chunk_size, device)
    return feats, k.cpu()


def beta_vae_score(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> BetaVAEResult:
    """BetaVAE score of ``represent`` on ``data`` (same data/represent/device contract as factor_vae_score)."""
    from sklearn.linear_model import LogisticRegression

    check_ground_truth(data)
    check_factor_sizes(data)
    gen = make_generator(seed)
    device = resolve_device(represent, device)
    x_train, y_train = _features(data, represent, num_train, batch_size, gen, chunk_size, device)
    x_eval, y_eval = _features(data, represent, num_eval, batch_size, gen, chunk_size, device)
    if y_train.unique().numel() < 2:
        raise MetricError(f"num_train={num_train} drew a single factor; use more training samples.")
    model = LogisticRegression().fit(x_train.numpy(), y_train.numpy())  # lbfgs: no random numbers, no seed
    train_acc = float(model.score(x_train.numpy(), y_train.numpy()))
    eval_acc = float(model.score(x_eval.numpy(), y_eval.numpy()))
    return BetaVAEResult(score=eval_acc, train_accuracy=train_acc, eval_accuracy=eval_acc)
