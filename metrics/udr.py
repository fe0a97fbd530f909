"""Unsupervised Disentanglement Ranking (Duan et al. 2020), disentanglement_lib's ``udr_sklearn``.

UDR needs no factors: it ranks the models of one group (one config, different
seeds) by how much each one's representation agrees with the others'. For
every ordered pair of models (i, j), on the same images:

1. each model's means [N, D] are standardized (scikit-learn's StandardScaler)
   and its dimensions with mean KL <= 0.01 are set to zero;
2. a similarity matrix R [D, D] (rows: i's dimensions, columns: j's) is taken:
   ``"lasso"``: |coefficients| of a Lasso (alpha = 0.1) regressing j's codes on
   i's, or ``"spearman"``: |Spearman rank correlation| of every pair of dimensions;
3. with ``filter_low_kl`` only the informative rows and columns (mean KL above
   ``kl_filter_threshold``) are kept;
4. the pairwise score is the relative strength
   ``(mean_cols max^2 / sum + mean_rows max^2 / sum) / 2`` (a 0 / 0 line counts 0);

and model j's UDR is the median of the pairwise scores (i, j) over i != j.
This module's headline ``score`` is the mean of the per-model UDRs (DL reports
only the per-model list, ``model_scores``).

All references are to google-research/disentanglement_lib,
``evaluation/udr/metrics/udr.py`` (``compute_udr_sklearn``,
``relative_strength_disentanglement``, ``lasso_correlation_matrix``,
``spearman_correlation_conv``) and ``evaluation/udr/evaluate.py`` (the mean KL).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sbvae.metrics.utils import (
    DEFAULT_CHUNK_SIZE,
    MetricError,
    MetricResult,
    as_numpy,
    make_generator,
    render_generator,
    resolve_device,
)

Encoder = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
CORRELATIONS = ("lasso", "spearman")
# compute_udr_sklearn zeroes the standardized codes of dimensions with mean KL <= 0.01, a literal that
# does not follow kl_filter_threshold; kept as DL has it. Unfiltered, such dead dimensions still count,
# as empty lines (lasso) or nan lines that zero every line they cross (spearman).
ZERO_KL = 0.01
# lasso_correlation_matrix: linear_model.Lasso(alpha=0.1); every other Lasso setting is scikit-learn's default.
LASSO_ALPHA = 0.1
# udr_sklearn's defaults and DL's UDR gin configs (config/tests/methods/udr/udr.gin, udr_spearman.gin:
# the only UDR configs DL ships): 1000 points in batches of 10, threshold 0.01.
NUM_DATA_POINTS = 1000
BATCH_SIZE = 10
KL_FILTER_THRESHOLD = 0.01


@dataclasses.dataclass(frozen=True)
class UDRResult(MetricResult):
    score: float  # mean over models of the per-model UDR (not a DL quantity; DL reports `scores` only)
    scores: np.ndarray  # [M] per-model UDR: DL's model_scores
    pairwise: np.ndarray  # [M, M] DL's pairwise_disentanglement_scores (rows: regressor model; diagonal 0)
    kl: np.ndarray  # [M, D] mean KL per dimension (nats)
    informative: np.ndarray  # [M, D] bool: mean KL > kl_filter_threshold
    correlation: str = "lasso"
    raw_correlations: np.ndarray | None = None  # [M, M, D, D] before the KL filter (include_raw_correlations)

    def scalars(self) -> dict[str, float]:
        """The mean UDR, then each model's UDR as ``model_<i>`` (the ranking the metric is for)."""
        return {"score": float(self.score), **{f"model_{i}": float(s) for i, s in enumerate(self.scores)}}

    def for_model(self, index: int) -> UDRModelResult:
        """Model ``index``'s share of the group's result: what its own evaluation record keeps."""
        return UDRModelResult(
            score=float(self.scores[index]),
            model=index,
            group_size=len(self.scores),
            group_mean=float(self.score),
            pairwise=self.pairwise[:, index].copy(),
            informative_dims=int(self.informative[index].sum()),
            correlation=self.correlation,
        )


@dataclasses.dataclass(frozen=True)
class UDRModelResult(MetricResult):
    """One model's UDR within its group: ``score`` ranks it against the group's other seeds."""

    score: float  # this model's UDR: the median of its pairwise scores
    model: int  # its index in the group (the replica index of a replica run)
    group_size: int
    group_mean: float  # the group's mean UDR
    pairwise: np.ndarray  # [M] the pairwise scores with this model as the regression target (its own entry 0)
    informative_dims: int
    correlation: str = "lasso"


def relative_strength(corr_matrix: Any) -> float:
    """DL's relative_strength_disentanglement of a similarity matrix [D_i, D_j] (entries >= 0).

    Per column and per row, max^2 / sum; a line summing to 0 (or holding a nan: a
    constant dimension under Spearman) scores 0 and still counts in the mean.
    An empty matrix (a model without informative latents, where DL raises) scores 0.
    """
    c = np.asarray(corr_matrix, dtype=np.float64)
    if c.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):  # a zero line is 0 / 0 (entries >= 0: never x / 0)
        score_x = np.nanmean(np.nan_to_num(np.max(c, axis=0) ** 2 / np.sum(c, axis=0)))
        score_y = np.nanmean(np.nan_to_num(np.max(c, axis=1) ** 2 / np.sum(c, axis=1)))
    return float((score_x + score_y) / 2)


def _ranks(codes: np.ndarray) -> np.ndarray:
    """Centered average ranks per column (ties share their mean rank, as scipy.stats.spearmanr).

    A column's N average ranks sum to N (N + 1) / 2 whatever the ties: every column's mean is (N + 1) / 2.
    """
    from scipy.stats import rankdata

    r = rankdata(codes, axis=0)
    return r - (len(r) + 1) / 2


def _rank_correlation(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """|Pearson| [Da, Db] of centered ranks; nan where a column is constant (spearmanr's nan)."""
    na, nb = np.sqrt((ra**2).sum(0)), np.sqrt((rb**2).sum(0))
    with np.errstate(invalid="ignore"):  # a constant column is all 0: 0 / 0, never x / 0
        corr = (ra.T @ rb) / (na[:, None] * nb[None, :])
    return np.minimum(np.abs(corr), 1.0)  # 1 + 2e-16 by rounding (17 equal rankings) -> 1; keeps nan


def spearman_matrix(a: Any, b: Any) -> np.ndarray:
    """|Spearman correlation| [D_a, D_b] of every dimension of codes a [N, D_a] with every one of b [N, D_b].

    DL's spearman_correlation_conv (scipy.stats.spearmanr per pair), as one product of rank matrices;
    like spearmanr it ranks the values as given (ranks are float64 whatever the codes' dtype).
    """
    return _rank_correlation(_ranks(a), _ranks(b))


def lasso_matrix(a: Any, b: Any, random_state: int | None = 0) -> np.ndarray:
    """|Lasso coefficients| [D_a, D_b] regressing each dimension of b [N, D_b] on all of a [N, D_a].

    DL's lasso_correlation_matrix: ``Lasso(alpha=0.1)`` fit on (a, b), coef_ transposed.
    ``random_state`` is passed through as DL does; the default cyclic solver draws nothing.
    """
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=LASSO_ALPHA, random_state=random_state)
    model.fit(np.asarray(a, dtype=np.float64), b)  # scikit-learn casts the targets to the regressors' float64
    return np.abs(np.atleast_2d(model.coef_)).T


def gaussian_kl(mean: Any, logvar: Any) -> np.ndarray:
    """Mean over images of KL(N(mean, exp(logvar)) || N(0, 1)) per dimension [D] (DL's compute_gaussian_kl)."""
    mu, lv = np.asarray(mean, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    return np.mean(0.5 * (mu**2 + np.exp(lv) - 1.0 - lv), axis=0)


def _check_group(num_models: int) -> None:
    if num_models < 2:
        raise MetricError(
            f"UDR ranks a group of models of one config trained with different seeds and got {num_models} "
            "model(s); score a replica run (train with `--replicas 2` or more)."
        )


def _check_codes(means: Sequence[Any], kls: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray]:
    _check_group(len(means))
    if len(kls) != len(means):
        raise MetricError(f"UDR needs one KL vector per model, got {len(kls)} for {len(means)} models.")
    codes = [np.asarray(as_numpy(m), dtype=np.float64) for m in means]
    shape = codes[0].shape
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
        raise MetricError(f"UDR needs codes [N, D] with N >= 2 per model, got shape {shape}.")
    for i, c in enumerate(codes):
        if c.shape != shape:
            raise MetricError(
                f"UDR compares models on the same inputs with the same latent size: model 0 has codes "
                f"{shape}, model {i} {c.shape}; encode the same images with models of one config."
            )
        if not np.isfinite(c).all():
            raise MetricError(f"model {i}'s codes contain nan or inf (has it diverged?); score finite checkpoints.")
    kl = [np.asarray(as_numpy(k), dtype=np.float64).ravel() for k in kls]
    for i, k in enumerate(kl):
        if k.shape != (shape[1],) or not np.isfinite(k).all():
            raise MetricError(
                f"UDR needs a finite mean KL per latent dimension ({shape[1]} per model); model {i} has {k.shape[0]} values."
            )
    return codes, np.stack(kl)


def udr_from_codes(
    means: Sequence[Any],
    kls: Sequence[Any],
    correlation: str = "lasso",
    filter_low_kl: bool = True,
    include_raw_correlations: bool = True,
    kl_filter_threshold: float = KL_FILTER_THRESHOLD,
    random_state: int | None = 0,
) -> UDRResult:
    """UDR of M >= 2 models from their posterior means on the same N inputs and their mean KL per dimension.

    ``means``: M arrays [N, D] (row n of every model encodes the same image); ``kls``: M arrays [D].
    Lasso takes M (M - 1) fits (the regression is not symmetric); Spearman M (M - 1) / 2 products
    (R(j, i) = R(i, j)^T and the relative strength is symmetric under transposition).
    """
    from sklearn.preprocessing import StandardScaler

    if correlation not in CORRELATIONS:
        raise MetricError(f"unknown UDR correlation {correlation!r}: choose 'lasso' or 'spearman'.")
    codes, kl = _check_codes(means, kls)
    num_models, dim = kl.shape
    reps = [StandardScaler().fit_transform(c) * (k > ZERO_KL) for c, k in zip(codes, kl)]
    informative = kl > kl_filter_threshold

    raw = np.zeros((num_models, num_models, dim, dim))
    if correlation == "spearman":
        ranks = [_ranks(r) for r in reps]
        for i in range(num_models):
            for j in range(i + 1, num_models):
                raw[i, j] = _rank_correlation(ranks[i], ranks[j])
                raw[j, i] = raw[i, j].T
    else:
        for i in range(num_models):
            for j in range(num_models):
                if i != j:
                    raw[i, j] = lasso_matrix(reps[i], reps[j], random_state)

    pairwise = np.zeros((num_models, num_models))
    for i in range(num_models):
        for j in range(num_models):
            if i != j:
                r = raw[i, j][informative[i]][:, informative[j]] if filter_low_kl else raw[i, j]
                pairwise[i, j] = relative_strength(r)
    scores = np.array([np.median(np.delete(pairwise[:, j], j)) for j in range(num_models)])
    return UDRResult(
        score=float(scores.mean()),
        scores=scores,
        pairwise=pairwise,
        kl=kl,
        informative=informative,
        correlation=correlation,
        raw_correlations=raw if include_raw_correlations else None,
    )


def _split(out: Any, index: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ok = (
        isinstance(out, (tuple, list))
        and len(out) == 2
        and all(isinstance(t, torch.Tensor) and t.ndim == 2 and t.shape[0] == n for t in out)
        and out[0].shape == out[1].shape
    )
    if not ok:
        raise MetricError(
            f"UDR's encoder {index} must map images [n, C, H, W] to (mean [n, D], logvar [n, D]); "
            "pass each model's `model.encode`."
        )
    mean, logvar = (t.detach().to(torch.float64) for t in out)
    if not bool(torch.isfinite(mean).all() and torch.isfinite(logvar).all()):
        raise MetricError(f"encoder {index} returned nan or inf (has the model diverged?); score finite checkpoints.")
    return mean, logvar


@torch.no_grad()
def udr(
    data: Any,
    encoders: Sequence[Encoder],
    seed: int | torch.Generator | None = 0,
    num_data_points: int = NUM_DATA_POINTS,
    batch_size: int = BATCH_SIZE,
    correlation: str = "lasso",
    filter_low_kl: bool = True,
    include_raw_correlations: bool = True,
    kl_filter_threshold: float = KL_FILTER_THRESHOLD,
    device: torch.device | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> UDRResult:
    """UDR of a group of models on ``num_data_points`` images of ``data`` that every model encodes.

    ``encoders``: one callable per model, images [n, C, H, W] -> (mean [n, D], logvar [n, D])
    (``model.encode``). Factor rows are drawn uniformly from one seeded CPU generator (then a
    render seed, then the Lasso seed), rendered once per ``chunk_size`` images on ``device``
    (default: the first encoder's) and encoded by every model. UDR uses no factor labels, so
    datasets without ground truth (chairs) work too.

    ``batch_size`` is DL's: the KL is averaged per batch of ``batch_size`` images and then over the
    batches, which for equal batches is the mean over all images, so it only has to divide
    ``num_data_points`` (DL raises otherwise); ``chunk_size`` sets the memory use.
    """
    _check_group(len(encoders))
    num_data_points, batch_size, chunk_size = int(num_data_points), int(batch_size), int(chunk_size)
    if batch_size < 1 or num_data_points < 2 or num_data_points % batch_size:
        raise MetricError(
            f"UDR needs num_data_points ({num_data_points}) >= 2 and a multiple of batch_size ({batch_size}), "
            "as disentanglement_lib requires; pick e.g. 1000 and 10."
        )
    if chunk_size < 1:
        raise MetricError(f"chunk_size must be >= 1, got {chunk_size}.")
    gen = make_generator(seed)
    device = resolve_device(encoders[0], device)
    factors = data.sample_factors(num_data_points, gen)
    render_gen = render_generator(gen)
    random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))

    means: list[list[torch.Tensor]] = [[] for _ in encoders]
    kl_sums = [None] * len(encoders)
    for start in range(0, num_data_points, chunk_size):
        f = factors[start : start + chunk_size].to(device)
        x = data.render(f, render_gen)
        for m, encode in enumerate(encoders):
            mean, logvar = _split(encode(x), m, f.shape[0])
            kl = (0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)).sum(0)
            kl_sums[m] = kl if kl_sums[m] is None else kl_sums[m] + kl
            means[m].append(mean.cpu())
    codes = [torch.cat(chunks).numpy() for chunks in means]
    kls = [(s / num_data_points).cpu().numpy() for s in kl_sums]
    return udr_from_codes(
        codes, kls, correlation, filter_low_kl, include_raw_correlations, kl_filter_threshold, random_state
    )
