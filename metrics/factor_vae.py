"""FactorVAE score (Kim & Mnih 2018), disentanglement_lib's protocol, batched.

1. Global variance (ddof=1) of each code dimension over ``num_variance_estimate``
   random images; dimensions with std >= ``prune_threshold`` are active.
2. A vote: pick a factor k uniformly, draw ``batch_size`` factor rows, set
   column k of all of them to the first row's value, encode, and vote for the
   active dimension with the smallest local_var / global_var (ties: first).
3. ``num_train`` votes fix the classifier (per dimension, the factor with most
   votes; ties: lowest factor); ``num_eval`` fresh votes are scored with it.

Votes are rendered and encoded many at a time (``chunk_size`` images per call).
Random draws come from one CPU generator in a fixed order (global-variance
factors and a render seed; train factor choices, train factor rows and a
render seed; the same for eval), each stage drawn up front, so a seed gives
the same factors, hence the same score, on every device and chunk size
(datasets with colour jitter draw it from a device generator seeded from that
stream: identical per device type and chunk size).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    Represent,
    check_factor_sizes,
    check_ground_truth,
    encode_factors,
    encode_groups,
    make_generator,
    render_generator,
    resolve_device,
)


@dataclasses.dataclass(frozen=True)
class FactorVAEResult(MetricResult):
    score: float  # = eval_accuracy
    train_accuracy: float
    eval_accuracy: float
    num_active_dims: int
    active_dims: list[int]
    train_votes: torch.Tensor  # [K, num_active_dims]
    eval_votes: torch.Tensor  # [K, num_active_dims]
    chance: float = 0.0  # 1 / K: the score of a code that tells no factor apart
    per_factor_accuracy: list[float] = dataclasses.field(default_factory=list)  # eval votes of factor k classified as k


def sample_vote_factors(
    data: Any, num_votes: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factor rows of ``num_votes`` vote batches: (factor fixed per vote [V], rows [V, batch_size, K])."""
    k = torch.randint(0, len(data.factor_sizes), (num_votes,), generator=generator, device=generator.device)
    rows = data.sample_factors(num_votes * batch_size, generator).view(num_votes, batch_size, -1)
    fixed = rows[:, :1, :].gather(2, k.view(-1, 1, 1).to(rows.device))  # first row's value of factor k
    rows.scatter_(2, k.view(-1, 1, 1).expand(-1, batch_size, 1).to(rows.device), fixed.expand(-1, batch_size, 1))
    return k, rows


def _votes(
    data: Any,
    represent: Represent,
    num_votes: int,
    batch_size: int,
    generator: torch.Generator,
    global_var: torch.Tensor,
    active: torch.Tensor,
    chunk_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Vote counts [K, num_active] of ``num_votes`` fresh vote batches."""
    num_factors = len(data.factor_sizes)
    k, rows = sample_vote_factors(data, num_votes, batch_size, generator)
    scale = global_var[active]

    def vote(codes: torch.Tensor) -> torch.Tensor:  # codes [v, batch_size, D] -> winning active dim [v]
        local_var = codes.double()[:, :, active].var(dim=1, correction=1)
        return (local_var / scale).argmin(dim=1)  # argmin: first of ties

    winners = encode_groups(data, represent, rows, vote, render_generator(generator), chunk_size, device)
    index = k.cpu() * int(active.numel()) + winners
    return torch.bincount(index, minlength=num_factors * int(active.numel())).view(num_factors, -1)


def factor_vae_score(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None = 0,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
    prune_threshold: float = 0.05,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FactorVAEResult:
    """FactorVAE score of ``represent`` (images [n, C, H, W] -> codes [n, D]) on ``data``.

    ``data`` needs ``factor_sizes``, ``sample_factors(n, generator)`` and
    ``render(factors, generator)``. ``device`` (default: ``represent``'s parameters'
    device if it is an nn.Module or a bound method of one, else CPU) is where the
    factors are rendered and encoded. ``chunk_size`` images are encoded per call.
    """
    check_ground_truth(data)
    check_factor_sizes(data)
    if batch_size < 2:
        raise MetricError("batch_size must be at least 2 to take a variance (ddof=1).")
    gen = make_generator(seed)
    device = resolve_device(represent, device)

    factors = data.sample_factors(num_variance_estimate, gen)
    codes = encode_factors(data, represent, factors, render_generator(gen), chunk_size, device)
    global_var = codes.double().var(dim=0, correction=1)
    active = torch.nonzero(global_var.sqrt() >= prune_threshold).flatten()
    num_factors = len(data.factor_sizes)
    if active.numel() == 0:
        warnings.warn(
            f"FactorVAE score: no code dimension has std >= {prune_threshold} (all {codes.shape[1]} collapsed); "
            "the score is 0.",
            stacklevel=2,
        )
        empty = torch.zeros(num_factors, 0, dtype=torch.long)
        return FactorVAEResult(0.0, 0.0, 0.0, 0, [], empty, empty, 1.0 / num_factors, [0.0] * num_factors)

    train_votes = _votes(data, represent, num_train, batch_size, gen, global_var, active, chunk_size, device)
    eval_votes = _votes(data, represent, num_eval, batch_size, gen, global_var, active, chunk_size, device)
    classifier = train_votes.argmax(dim=0)  # argmax: lowest factor among ties
    dims = torch.arange(active.numel())
    train_acc = float(train_votes[classifier, dims].sum()) / max(1, int(train_votes.sum()))
    eval_acc = float(eval_votes[classifier, dims].sum()) / max(1, int(eval_votes.sum()))
    # Per factor: of the eval votes cast for factor k, the share whose winning dimension the classifier maps to k.
    right = eval_votes * (classifier.view(1, -1) == torch.arange(num_factors).view(-1, 1))
    per_factor = [float(r) / max(1, int(n)) for r, n in zip(right.sum(1), eval_votes.sum(1))]
    return FactorVAEResult(
        score=eval_acc,
        train_accuracy=train_acc,
        eval_accuracy=eval_acc,
        num_active_dims=int(active.numel()),
        active_dims=[int(i) for i in active.cpu()],
        train_votes=train_votes,
        eval_votes=eval_votes,
        chance=1.0 / num_factors,
        per_factor_accuracy=per_factor,
    )
