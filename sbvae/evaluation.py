"""Scoring a trained model: the metric presets shared by sbvae-eval and the MetricsCallback.

A preset fixes each metric's sizes: ``paper`` is disentanglement_lib's protocol
(the numbers comparable with published tables), ``quick`` is small enough for
smoke tests and frequent in-training checks.  The representation is always the
posterior mean; data are drawn from the checkpoint's own dataset with one
seeded generator per metric, so a checkpoint and a seed give the same numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from sbvae import metrics as M
from sbvae.errors import SBVAEError
from sbvae.objectives import reconstruction_nll

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "elbo": {"num_images": 10_000},
        "mig": {"num_points": 10_000, "num_bins": 20},
        "factor_vae": {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000, "num_variance_estimate": 10_000},
        "beta_vae": {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000},
        "dci": {"num_train": 10_000, "num_test": 5_000},
        "sap": {"num_train": 10_000, "num_test": 5_000},
        "modularity": {"num_train": 10_000, "num_test": 5_000},
        "irs": {"num_train": 10_000, "diff_quantile": 0.99, "num_bins": 20},
        "unsupervised": {"num_train": 10_000, "num_bins": 20},
        "downstream": {"num_train": [10, 100, 1_000, 10_000], "num_test": 5_000, "predictor": "logistic_regression"},
        "downstream_trees": {"num_train": [10, 100, 1_000, 10_000], "num_test": 5_000, "predictor": "boosted_trees"},
        "udr": {"num_data_points": 1_000, "batch_size": 10, "correlation": "lasso"},
    },
    "quick": {
        "elbo": {"num_images": 1_000},
        "mig": {"num_points": 2_000, "num_bins": 20},
        "factor_vae": {"batch_size": 32, "num_train": 300, "num_eval": 150, "num_variance_estimate": 1_000},
        "beta_vae": {"batch_size": 16, "num_train": 300, "num_eval": 150},
        "dci": {"num_train": 500, "num_test": 250, "gbt_kwargs": {"n_estimators": 10}},
        "sap": {"num_train": 500, "num_test": 250},
        "modularity": {"num_train": 500, "num_test": 250},
        "irs": {"num_train": 2_000, "diff_quantile": 0.99, "num_bins": 20},
        "unsupervised": {"num_train": 2_000, "num_bins": 20},
        "downstream": {"num_train": [10, 100, 500], "num_test": 250, "predictor": "logistic_regression"},
        "downstream_trees": {
            "num_train": [10, 100, 500],
            "num_test": 250,
            "predictor": "boosted_trees",
            "predictor_kwargs": {"n_estimators": 10},
        },
        "udr": {"num_data_points": 500, "batch_size": 10, "correlation": "lasso"},
    },
}


def _elbo(model, data, **params):
    """Held-out negative ELBO, NLL, KL (nats per image) and latents used: the paper's first four columns."""
    likelihood, variance = model.hparams.likelihood, model.hparams.gaussian_variance
    return M.evaluate_elbo(
        data, model.encode, lambda z, x: reconstruction_nll(model.decode(z), x, likelihood, variance), **params
    )


def _on_codes(metric: Callable[..., Any]) -> Callable[..., Any]:
    """Adapt a metric of (data, represent) to (model, data): the representation is the posterior mean."""
    return lambda model, data, **params: metric(data, model.represent, **params)


METRICS: dict[str, Callable[..., Any]] = {
    "elbo": _elbo,
    "mig": _on_codes(M.compute_mig),
    "factor_vae": _on_codes(M.factor_vae_score),
    "beta_vae": _on_codes(M.beta_vae_score),
    "dci": _on_codes(M.dci),
    "sap": _on_codes(M.sap),
    "modularity": _on_codes(M.modularity_explicitness),
    "irs": _on_codes(M.irs),
    "unsupervised": _on_codes(M.unsupervised),
    "downstream": _on_codes(M.downstream),
    "downstream_trees": _on_codes(M.downstream),
}
# Metrics of a group of models (the seeds of one config), not of one model: sbvae-eval scores them over
# the replicas of a replica run, and each replica's record keeps its own share.
GROUP_METRICS: dict[str, Callable[..., Any]] = {
    "udr": lambda models, data, **params: M.udr(data, [m.encode for m in models], **params),
}
NEEDS_FACTORS = set(METRICS) - {"elbo"}
# Metrics whose per-factor classifier fits can run in parallel threads, with the same numbers.
PARALLEL_METRICS = {"dci", "downstream", "downstream_trees"}
DEFAULT_METRICS = ("mig", "factor_vae")


def parse_metrics(names: str | list[str]) -> list[str]:
    chosen = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    known = [*METRICS, *GROUP_METRICS]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise SBVAEError(f"unknown metric(s) {unknown}: choose from {', '.join(known)} (comma-separated).")
    return chosen


def refuse_group_metrics(names: list[str], where: str) -> None:
    """One model cannot be ranked against its group: say where the group metrics work."""
    group = [n for n in names if n in GROUP_METRICS]
    if group:
        raise SBVAEError(
            f"{', '.join(group)} ranks the seeds of one group against each other, not {where}: train "
            "with --replicas 2 or more and score the run folder with sbvae-eval --ckpt RUN --metrics udr."
        )


def _downstream_images(num_train, num_test, **_) -> int:
    """Each training size's codes and a fresh test set for each."""
    return sum(num_train) + len(num_train) * num_test


# Images each metric encodes for its parameters: the length of its progress bar.
IMAGES: dict[str, Callable[..., int]] = {
    "elbo": lambda num_images, **_: num_images,
    "mig": lambda num_points, **_: num_points,
    "factor_vae": lambda num_variance_estimate, num_train, num_eval, batch_size, **_: (
        num_variance_estimate + (num_train + num_eval) * batch_size
    ),
    "beta_vae": lambda num_train, num_eval, batch_size, **_: (num_train + num_eval) * 2 * batch_size,
    "dci": lambda num_train, num_test, **_: num_train + num_test,
    "sap": lambda num_train, num_test, **_: num_train + num_test,
    "modularity": lambda num_train, num_test, **_: num_train + num_test,
    "irs": lambda num_train, **_: num_train,
    "unsupervised": lambda num_train, **_: num_train,
    "downstream": _downstream_images,
    "downstream_trees": _downstream_images,
}


class _Counting:
    """The model, with every image it encodes counted on a progress bar."""

    def __init__(self, model, bar):
        self._model, self._bar = model, bar

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, x):
        self._bar.update(x.shape[0])
        return self._model.encode(x)

    def represent(self, x):
        self._bar.update(x.shape[0])
        return self._model.represent(x)


def _bar(name: str, images: int, progress: bool) -> tqdm:
    """A metric's progress bar on stderr, counting the images it encodes."""
    return tqdm(
        total=images, desc=f"{name:<12}", unit="img", unit_scale=True, file=sys.stderr, disable=not progress, leave=True
    )


def score(
    model,
    data,
    names: list[str],
    preset: str = "paper",
    seed: int = 0,
    device=None,
    progress: bool = False,
    jobs: int = 1,
) -> dict[str, M.MetricResult]:
    """Each metric's result; ``progress`` shows a bar per metric on stderr (images encoded).
    ``jobs`` threads fit the per-factor classifiers of PARALLEL_METRICS (-1: every core)."""
    if preset not in PRESETS:
        raise SBVAEError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}.")
    names = parse_metrics(names)
    refuse_group_metrics(names, "a single model")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0 or jobs < -1:
        raise SBVAEError(f"jobs must be a positive count of threads or -1 (every core), got {jobs!r}.")
    if not getattr(data, "has_ground_truth", True) and NEEDS_FACTORS & set(names):
        raise SBVAEError(
            f"dataset {type(data).__name__} has no ground-truth factors, so disentanglement metrics cannot be "
            "computed on it; score a model trained on a dataset with factors (dsprites, colored-sprites, circles, shapes3d); only 'elbo' works without factors."
        )
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = {}
    try:
        for name in names:
            params = PRESETS[preset][name]
            extra = {"n_jobs": jobs} if name in PARALLEL_METRICS else {}
            with _bar(name, IMAGES[name](**params), progress) as bar:
                results[name] = METRICS[name](_Counting(model, bar), data, seed=seed, device=device, **params, **extra)
    finally:
        model.train(was_training)
    return results


def score_group(
    models: list, data, names: list[str], preset: str = "paper", seed: int = 0, device=None, progress: bool = False
) -> list[dict[str, M.MetricResult]]:
    """The group metrics among ``names`` over ``models`` (the seeds of one group, on the same images), split
    into each model's results: model k's UDR is its own rank within the group."""
    chosen = [n for n in parse_metrics(names) if n in GROUP_METRICS]
    if chosen and len(models) < 2:
        refuse_group_metrics(chosen, "a run of one seed")
    per_model: list[dict[str, M.MetricResult]] = [{} for _ in models]
    for name in chosen:
        params = PRESETS[preset][name]
        was_training = [m.training for m in models]
        for m in models:
            m.eval()
        try:
            with _bar(name, params["num_data_points"] * len(models), progress) as bar:
                group = GROUP_METRICS[name](
                    [_Counting(m, bar) for m in models],
                    data,
                    seed=seed,
                    device=device or next(models[0].parameters()).device,
                    **params,
                )
        finally:
            for m, mode in zip(models, was_training):
                m.train(mode)
        for k, results in enumerate(per_model):
            results[name] = group.for_model(k)
    return per_model


def records(results: dict[str, M.MetricResult], preset: str, seed: int) -> dict[str, dict]:
    """The results as JSON: each metric's parameters (with the seed) and every field of its result."""
    return {name: {"params": {**PRESETS[preset][name], "seed": seed}, **r.as_dict()} for name, r in results.items()}


def scalars(results: dict[str, M.MetricResult]) -> dict[str, float]:
    """One number per TensorBoard tag: each metric's score as ``<metric>``, its other scalars as ``<metric>/<name>``."""
    return {
        (name if key == "score" else f"{name}/{key}"): value
        for name, r in results.items()
        for key, value in r.scalars().items()
    }
