"""What every metric shares: result objects, the ground-truth check and the code sampler.

All metrics consume data the same way (disentanglement_lib's protocol):
factor class indices are drawn uniformly with one seeded CPU
``torch.Generator``, moved to the evaluation device, rendered there in chunks
and encoded by ``represent`` (the encoder mean), so no metric ever holds all
images in memory and the same seed gives the same factors on every device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

try:  # the CLIs print SBVAEError as one sentence
    from sbvae.errors import SBVAEError as _UserError
except ImportError:  # pragma: no cover
    _UserError = Exception

Represent = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_CHUNK_SIZE = 1024


class MetricError(_UserError, ValueError):
    """A metric asked of data or a representation it cannot score; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """Base of every result: a frozen dataclass with a headline ``score``, ``scalars()`` and a JSON-ready ``as_dict()``."""

    score: float

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def scalars(self) -> dict[str, float]:
        """The result's single numbers by name, ``score`` first: what TensorBoard logs and sbvae-eval's table shows."""
        out = {"score": float(self.score)}  # first; the loop below writes it again, unchanged
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                out[f.name] = float(value)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def as_tensor(x: Any, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A torch tensor from a tensor or an array-like (numpy arrays are not copied when possible)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype=dtype or t.dtype, device=device if device is not None else t.device)


def as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_ground_truth(data: Any) -> None:
    """Refuse image collections without factors (chairs) with one sentence."""
    if not getattr(data, "has_ground_truth", True):
        raise MetricError(
            f"{type(data).__name__} has no ground-truth factors (has_ground_truth is False), so "
            "disentanglement metrics cannot be computed on it; evaluate on a dataset with factors "
            "(dsprites, colored-sprites, circles) instead."
        )


def check_factor_sizes(data: Any) -> None:
    """Refuse constant factors (a single class): they carry no information and break the scores."""
    names = getattr(data, "factor_names", None) or [str(i) for i in range(len(data.factor_sizes))]
    constant = [n for n, s in zip(names, data.factor_sizes) if int(s) < 2]
    if constant:
        raise MetricError(
            f"factor(s) {constant} of {type(data).__name__} take a single value, which no "
            "representation can be scored on; drop them from factor_sizes (disentanglement_lib "
            "drops dSprites' constant colour the same way)."
        )


def make_generator(seed_or_generator: int | torch.Generator | None) -> torch.Generator:
    """The evaluation's one generator: a seeded CPU generator (an int seed), or the one given."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    return torch.Generator(device="cpu").manual_seed(0 if seed_or_generator is None else int(seed_or_generator))


def resolve_device(represent: Any, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of ``represent``'s parameters, else CPU.

    ``represent`` may be an ``nn.Module`` or a bound method of one (``model.encode_mean``);
    for any other callable pass ``device`` explicitly to evaluate on a GPU.
    """
    if device is not None:
        return torch.device(device)
    for owner in (represent, getattr(represent, "__self__", None)):
        if isinstance(owner, torch.nn.Module):
            for tensor in owner.parameters():
                return tensor.device
            for tensor in owner.buffers():
                return tensor.device
    return torch.device("cpu")


def render_generator(generator: torch.Generator) -> torch.Generator:
    """The generator handed to ``data.render`` (colour jitter), seeded from the main stream.

    It lives on the main generator's device (the CPU): sbvae's datasets draw jitter on
    the generator's device and move it to the factors' device, so jittered images, and
    hence scores, are the same on every device. A separate stream keeps the factor
    draws independent of how much jitter a dataset consumes.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=generator.device).manual_seed(seed)


@torch.no_grad()
def encode_factors(
    data: Any,
    represent: Represent,
    factors: torch.Tensor,
    render_gen: torch.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Codes [n, D] (on ``device``) of the images rendered from factor indices [n, K], in chunks."""
    device = resolve_device(represent, device)
    chunks = []
    for start in range(0, factors.shape[0], chunk_size):
        f = factors[start : start + chunk_size].to(device)
        x = data.render(f, render_gen)
        z = represent(x)
        if isinstance(z, (tuple, list)) or not hasattr(z, "shape") or len(z.shape) != 2 or z.shape[0] != f.shape[0]:
            got = type(z).__name__ if isinstance(z, (tuple, list)) else tuple(getattr(z, "shape", ()))
            raise MetricError(
                f"represent must map images [n, C, H, W] to codes [n, D] (the encoder mean), got {got}; "
                "pass e.g. `lambda x: model.encoder(x)[0]`."
            )
        z = as_tensor(z, device=device)
        if not bool(torch.isfinite(z).all()):
            raise MetricError(
                "represent returned nan or inf codes (has the model diverged?); score a finite checkpoint."
            )
        chunks.append(z)
    return torch.cat(chunks)


def sample_codes(
    data: Any,
    represent: Represent,
    num_points: int,
    generator: int | torch.Generator | None = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` uniform factor draws and their codes: (codes [N, D], factors [N, K] long).

    Both come back on the evaluation device (``device``; by default ``represent``'s device).
    ``generator`` is an int seed or a CPU ``torch.Generator``; with a generator, repeated calls
    continue its stream (how the metrics draw train and test sets).
    """
    check_ground_truth(data)
    gen = make_generator(generator)
    device = resolve_device(represent, device)
    factors = data.sample_factors(int(num_points), gen)
    codes = encode_factors(data, represent, factors, render_generator(gen), chunk_size, device)
    return codes, factors.to(device)


def sample_train_test(
    data: Any,
    represent: Represent,
    seed: int | torch.Generator | None,
    num_train: int,
    num_test: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    """Train and test (codes, factors) from one seeded stream, plus a seed for the scikit-learn model.

    The protocol of the classifier-based metrics (DCI, SAP, modularity/explicitness); only DCI's gradient
    boosting uses the seed (SAP's SVM and explicitness's lbfgs draw no random numbers).
    """
    check_ground_truth(data)
    check_factor_sizes(data)
    gen = make_generator(seed)
    device = resolve_device(represent, device)
    train = sample_codes(data, represent, num_train, gen, chunk_size, device)
    test = sample_codes(data, represent, num_test, gen, chunk_size, device)
    random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
    return train, test, random_state


def encode_groups(
    data: Any,
    represent: Represent,
    rows: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    render_gen: torch.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``reduce`` applied to the codes [v, G, D] of groups of factor rows [V, G, K], many groups per call.

    The groups (vote batches, image pairs) are rendered and encoded ``chunk_size // G`` at a
    time; the reduced outputs [v, ...] are moved to the CPU and concatenated [V, ...].
    """
    device = resolve_device(represent, device)
    num_groups, group, width = rows.shape
    per_chunk = max(1, chunk_size // group)
    out = []
    for start in range(0, num_groups, per_chunk):
        chunk = rows[start : start + per_chunk]
        codes = encode_factors(data, represent, chunk.reshape(-1, width), render_gen, chunk.shape[0] * group, device)
        out.append(reduce(codes.view(chunk.shape[0], group, -1)).cpu())
    return torch.cat(out)


def per_factor(fit: Callable[[int], Any], num_factors: int, n_jobs: int = 1) -> list[Any]:
    """``[fit(0), ..., fit(K - 1)]``, the independent per-factor fits of DCI and the downstream task.

    ``n_jobs`` > 1 (or -1 for every core) runs them in that many threads: scikit-learn's tree
    builders release the GIL, and threads start at once where worker processes would each import
    torch. Each fit is seeded on its own, so the results are the same as in order; the gain is
    bounded by the slowest factor (the one with most classes, for boosted trees).
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise MetricError(f"n_jobs must be a positive count of threads or -1 (every core), got {n_jobs!r}.")
    workers = min((os.cpu_count() or 1) if n_jobs == -1 else n_jobs, num_factors)
    if workers <= 1:
        return [fit(k) for k in range(num_factors)]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=workers, prefer="threads")(delayed(fit)(k) for k in range(num_factors))
