"""Keyed random numbers: each draw is a hash of its key (seed, purpose, rank, step) and its position.

A counter-based generator written in plain integer tensor ops, so that

* a resumed run draws exactly what the uninterrupted run would have drawn (no generator state to save);
* replica k of a replica-parallel run draws what the single run with seed base + k draws;
* a CUDA graph replays fresh numbers each step: the step is a device tensor the graph increments;
* DDP processes (the rank is part of the key) never share a stream.

The hash is MurmurHash3's 32-bit finaliser, chained over the key's words; products are split into
16-bit halves so that no int64 product overflows on any device.  On the CPU the same numbers come from
numpy's uint32 arithmetic, which wraps by definition (a few operations instead of forty small tensor
ones).  Uniforms carry 24 bits.

A ``KeyedRandom`` holds G keys (one per replica, or one per evaluation row) and hands out draws whose
first dimension is cut into G equal chunks: chunk g is what the single key g would have drawn.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9

# The first word of every key: what the numbers are for, so no two purposes share a stream.
FACTORS, RENDER, EVAL_FACTORS, EVAL_RENDER, POSTERIOR, PERMUTATION, EVAL_POSTERIOR, EVAL_SPLIT = range(8)


def _mul32(h: torch.Tensor, m: int) -> torch.Tensor:
    """(h * m) mod 2^32 for 0 <= h < 2^32, never exceeding 2^49 in int64."""
    lo, hi = m & 0xFFFF, m >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _absorb(h, part):
    """Mix one key part (an int or an int64 tensor, up to 63 bits) into the hash state ``h``.

    Ints are hashed on the host, and while ``h`` is still an int (no tensor part yet) the chain stays
    there too: they enter as kernel arguments, with no host-to-device copy (keys can be built inside
    CUDA graph capture) and few device ops.
    """
    if isinstance(part, torch.Tensor) and isinstance(h, int) and part.device.type == "cpu" and part.numel() == 1:
        part = int(part)  # reading a CPU scalar waits on nothing: the chain stays on the host
    if isinstance(part, torch.Tensor):
        words = (part.to(torch.int64) & _M32, (part.to(torch.int64) >> 32) & _M32)
        mixed = [_fmix32(w) for w in words]
    else:
        part = int(part)
        mixed = [_fmix32_int(part & _M32), _fmix32_int((part >> 32) & _M32)]
    for m in mixed:
        if isinstance(h, int):
            spread = _GOLDEN + ((h << 6) & _M32) + (h >> 2)
            h = _fmix32_int((h ^ (m + spread)) & _M32) if isinstance(m, int) else _fmix32(((m + spread) ^ h) & _M32)
        else:
            h = _fmix32((h ^ (m + _GOLDEN + ((h << 6) & _M32) + (h >> 2))) & _M32)
    return h


def _fmix32_int(h: int) -> int:
    """``_fmix32`` on a Python int (the same numbers)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def key(*parts, device: torch.device | str | None = None) -> torch.Tensor:
    """The 32-bit key (int64 tensor, broadcast over tensor parts) of ``parts`` such as (purpose, seed, rank, step)."""
    h = 0x2545F491
    for part in parts:
        h = _absorb(h, part)
    return torch.full((), h, dtype=torch.int64, device=device) if isinstance(h, int) else h


def _fmix32_host(h: np.ndarray) -> np.ndarray:
    """``_fmix32`` on uint32 arrays, whose products wrap mod 2^32 by definition (the same numbers): the CPU's
    draws in a few numpy operations instead of some forty small tensor operations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@functools.lru_cache(maxsize=64)
def _spread_positions_host(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint32) * np.uint32(_GOLDEN)


@functools.cache  # never evicted: a captured CUDA graph reads these tensors, and would read freed memory
def _spread_positions(n: int, device: torch.device) -> torch.Tensor:
    """Positions 0..n-1 times the golden ratio, mod 2^32: the same for every step, so made once (a
    graph's warm-up steps make them before capture). A program's draws have few distinct sizes."""
    return _mul32(torch.arange(n, dtype=torch.int64, device=device), _GOLDEN)


class KeyedRandom:
    """Uniform and normal draws from G keys; pass it wherever a dataset takes a ``generator``.

    Draw number i of this object (its i-th call) is keyed by (key, i), so a fixed program of draws
    (one training step) is reproducible from the key alone.
    """

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.reshape(-1).to(torch.int64)
        self.device = self.keys.device
        self._draws = 0
        # On the CPU the keys are read for free, and the per-draw key mixing runs on the host.
        self._host_keys = self.keys.tolist() if self.device.type == "cpu" else None

    def _bits(self, shape: tuple[int, ...]) -> torch.Tensor:
        groups = len(self.keys)
        if not shape or shape[0] % groups:
            raise ValueError(
                f"a keyed draw's first dimension must be a multiple of its {groups} keys, got shape {shape}."
            )
        per_group = math.prod(shape) // groups
        if self._host_keys is not None:
            draw_key = np.array([_absorb(k, self._draws) for k in self._host_keys], dtype=np.uint32)[:, None]  # [G, 1]
            self._draws += 1
            h = _fmix32_host(
                _fmix32_host(_spread_positions_host(per_group)[None, :] ^ draw_key) ^ (draw_key * np.uint32(0x9E37))
            )
            return torch.from_numpy(h.astype(np.int64)).reshape(shape)
        draw_key = _absorb(self.keys, self._draws).unsqueeze(1)
        salt = (draw_key * 0x9E37) & _M32
        self._draws += 1
        index = _spread_positions(per_group, self.device)
        h = _fmix32(_fmix32(index.unsqueeze(0) ^ draw_key) ^ salt)
        return h.reshape(shape)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform on the open interval (0, 1)."""
        u = (self._bits(tuple(shape)) >> 8).to(torch.float32) * 2.0**-24 + 2.0**-25
        return u.to(dtype)

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return (self.rand(shape) * high).long().clamp_max_(high - 1)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal (Box-Muller on two uniform draws)."""
        u1, u2 = self.rand(shape), self.rand(shape)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)


def stream(purpose: int, seed, rank, step) -> KeyedRandom:
    """The stream of one purpose at one training step; ``seed`` may hold one seed per replica, and ``step``
    several steps (a 1-D tensor): the keys are then every (seed, step) pair, seed-major, so chunk
    ``r * len(step) + k`` is what seed r draws at step k alone."""
    if isinstance(step, torch.Tensor) and step.ndim == 1 and isinstance(seed, torch.Tensor) and seed.ndim == 1:
        seed, step = seed[:, None], step[None, :]
    return KeyedRandom(key(purpose, seed, rank, step))


def rand(shape, generator=None, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform draws from a ``KeyedRandom`` or a ``torch.Generator`` (None: the global one), on its device."""
    if isinstance(generator, KeyedRandom):
        return generator.rand(tuple(shape), dtype)
    device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def randint(high: int, shape, generator=None, device=None) -> torch.Tensor:
    if isinstance(generator, KeyedRandom):
        return generator.randint(high, tuple(shape))
    device = generator.device if generator is not None else device
    return torch.randint(high, tuple(shape), generator=generator, device=device)
