"""The training step as one device program: draw, render, loss, backward, guarded Adam, bookkeeping.

The plain nn.Modules and ``loss_terms`` stay the definition of the model; this module applies speed to
them from outside.  One ``Engine.step()`` is a whole optimisation step with no host synchronisation:

* the batch and every random number come from keyed streams (``sbvae.keyed``) of the device step counter,
  so a replayed CUDA graph still sees fresh images, colours and posterior noise each step;
* divergence is detected on the device: a step whose loss is non-finite or above ``max_loss`` (or whose
  gradient is non-finite) restores the weights and optimiser state it started from, and every later
  step does the same, so the weights freeze at the last good step.  The host reads the flag only in
  ``first_bad_step()``, which the LightningModule calls at logging, validation and the end of training;
* on CUDA, with one process, the step is captured once in a CUDA graph and replayed ("graph" mode).
  "eager" runs the same program op by op (CPU, DDP, debugging).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist

from sbvae import keyed
from sbvae.errors import SBVAEError

CPU_BATCHES_PER_DRAW = 8  # see draw_ahead_for
WARMUP_STEPS = 3  # eager steps on a side stream before capture: lazy state (Adam moments, cuDNN plans) settles


class Engine:
    """Runs ``model.loss_terms`` as guarded optimisation steps.

    Args:
        model: a module with ``loss_terms(x, **randomness) -> dict``, ``step_randomness(n, draw)``,
            optionally ``loss_pieces(x, **randomness)`` (a list of ``loss_terms``-like callables, each
            run forward then backward in turn, their terms stacked, then ``gather_piece_gradients()``;
            None for one piece),
            ``backward_terms`` (the terms summed for backward and checked for divergence) and
            ``hparams.max_loss``.
        optimizers: the optimisers of all parameters (Adam with ``capturable=True`` on CUDA).
        draw_batch: ``draw_batch(step) -> images`` for a device step tensor (keyed, no host work).
        seed, rank: the keys of this run's streams (``seed`` may be a tensor of replica seeds).
        mode: "graph" (CUDA graph, one process) or "eager".
        start_step: the global step of the first call (a resumed run continues its streams).
        backward: runs backward on the summed loss (Lightning's ``manual_backward`` under DDP, which arms
            the gradient all-reduce); default ``loss.backward()``.
        max_loss: a guarded term above this counts as divergence (default: ``model.hparams.max_loss``).
        replicas: R when the model is a stack of R replicas (``sbvae.replicas``): its terms are [R]
            vectors, its parameters and optimiser state have a leading replica dimension, and each
            replica diverges and freezes on its own.
        draw_ahead: in eager mode, draw the images and random inputs of this many steps at once, from a
            1-D tensor of steps (``draw_batch`` and the model's streams then return every step's chunk,
            seed-major), and serve them one step at a time.  The numbers are those of one step at a time;
            on the CPU the draw's forty-odd small operations, run once per block, cost a fifth as much.
            Blocks start at multiples of ``draw_ahead``, so a resumed run draws exactly as an unbroken one.
            The step counter is read on the host each step: free on the CPU, where ``draw_ahead_for`` picks it.
        fallback: in graph mode, go on with eager steps (one warning, ``self.fallback`` says why) when the
            capture raises, or when the first replayed step gives a non-finite loss where the eager step's is
            finite or disagrees with the eager computation of the same step beyond float rounding; without
            it (``step_mode: graph`` asked for explicitly), such a failure stops the run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: list[torch.optim.Optimizer],
        draw_batch: Callable[[torch.Tensor], torch.Tensor],
        seed,
        rank: int,
        mode: str,
        start_step: int,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
        max_loss: float | None = None,
        replicas: int | None = None,
        draw_ahead: int = 1,
        fallback: bool = False,
    ):
        if mode not in ("graph", "eager"):
            raise ValueError(f"unknown engine mode {mode!r}: 'graph' or 'eager'.")
        if draw_ahead < 1 or (draw_ahead > 1 and mode == "graph"):
            raise ValueError(f"draw_ahead must be 1 in graph mode and at least 1 in eager mode, got {draw_ahead}.")
        self.model, self.optimizers, self.draw_batch = model, optimizers, draw_batch
        self.seed, self.rank, self.mode, self.autocast_dtype = seed, rank, mode, autocast_dtype
        self.device = normalised_device(device)
        self.max_loss = model.hparams.max_loss if max_loss is None else max_loss
        self.replicas = replicas
        self.backward = backward or torch.Tensor.backward
        self.step_counter = torch.tensor(start_step, dtype=torch.int64, device=device)
        self.bad_step = torch.full((replicas,) if replicas else (), -1, dtype=torch.int64, device=device)
        self.bad_values: torch.Tensor | None = None
        self._values: torch.Tensor | None = None  # this step's terms, stacked: one buffer that every step writes
        self.terms: dict[str, torch.Tensor] = {}
        self.fallback_allowed = fallback
        self.fallback: str | None = None  # why a graph engine went eager, once it has
        self._runner = graph_runner() if mode == "graph" else None
        self._graph = None  # the runner's captured step
        self._calls = 0
        self.draw_ahead = draw_ahead
        _lay_out_state_like_weights(optimizers)
        if mode == "eager":
            for opt in optimizers:
                # Adam.step asks on every step whether a CUDA graph is being captured; under Lightning
                # (PYTORCH_NVML_BASED_CUDA_CHECK=1) each asking loads the NVML library, 0.2 ms of a CPU step.
                # An eager engine captures nothing.
                opt._accelerator_graph_capture_health_check = _nothing_to_check
        self._block: tuple[int, torch.Tensor, dict[str, torch.Tensor]] | None = None

    # -- the step ---------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]]

    def _optimizer_state(self) -> list[torch.Tensor]:
        return [
            v
            for opt in self.optimizers
            for state in opt.state.values()
            for v in state.values()
            if torch.is_tensor(v) and v.device == self.device
        ]

    def _program(self) -> None:
        step = self.step_counter
        x, randomness = self._inputs(step) if self.draw_ahead == 1 else self._inputs_from_block()
        pieces = getattr(self.model, "loss_pieces", lambda *a, **k: None)(x, **randomness)
        if pieces is None:
            terms = self._forward_backward(lambda: self.model.loss_terms(x, **randomness))
        else:  # forward and backward piece by piece (replicas looped on the CPU), each piece a replica
            outs = [self._forward_backward(piece) for piece in pieces]
            terms = {name: torch.stack([o[name] for o in outs]) for name in outs[0]}
            self.model.gather_piece_gradients()
        guarded = torch.stack([terms[name].float() for name in self.model.backward_terms])  # [T] or [T, R]
        params = self._params()
        grads = [p.grad for p in params if p.grad is not None]
        if self.replicas:  # one gradient norm per replica
            # over every dimension but the replicas' (a view, not flatten's copy of a channels-last kernel)
            grad_norm = torch.stack(
                [
                    torch.linalg.vector_norm(g.float(), dim=tuple(range(1, g.ndim))) if g.ndim > 1 else g.float().abs()
                    for g in grads
                ]
            ).sum(0)
        else:
            grad_norm = torch.stack(torch._foreach_norm(grads)).float().sum()
        bad = (~torch.isfinite(guarded)).any(0) | (guarded > self.max_loss).any(0) | ~torch.isfinite(grad_norm)
        if not self.replicas and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            bad_any = bad.to(torch.int32)
            dist.all_reduce(bad_any, op=dist.ReduceOp.MAX)  # the copies of a DDP run skip together
            bad = bad_any.bool()
        frozen = bad | (self.bad_step >= 0)
        if self.device.type == "cpu" and not bool(frozen.any()):
            # A CPU tensor is read without waiting on a device, so the usual step (nothing bad, nothing
            # frozen) updates plainly; the masked update is the program an accelerator runs every step.
            for opt in self.optimizers:
                opt.step()
        else:
            self._masked_update(params, frozen)
        first_time = bad & (self.bad_step < 0)
        values = torch.stack([v.detach().float() for v in terms.values()])  # [V] or [V, R]
        if self.bad_values is None:  # allocated in the first (eager) step, before any capture
            self.bad_values, self._values = torch.zeros_like(values), torch.zeros_like(values)
        # In place: a captured graph writes the buffers it was captured with, and so does every eager step,
        # so the host reads the latest step's terms (and the first bad step's) whichever ran it.
        self.bad_values.copy_(torch.where(first_time, values, self.bad_values))
        self._values.copy_(values)
        self.bad_step.copy_(torch.where(first_time, step, self.bad_step))
        self.terms = dict(zip(terms, self._values.unbind()))
        self.step_counter.add_(1)

    def _inputs(self, step: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The images and the model's random inputs of ``step`` (a scalar, or a 1-D tensor of steps)."""
        x = self.draw_batch(step)
        inputs = self.model.step_randomness(
            x.shape[0], lambda purpose: keyed.stream(purpose, self.seed, self.rank, step)
        )
        if getattr(self.model, "uses_step", False):
            inputs["step"] = step_rows(step, _seed_count(self.seed), x.shape[0])
        return x, inputs

    def _inputs_from_block(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This step's chunk of the block of ``draw_ahead`` steps holding it, drawn when first needed."""
        step, size = int(self.step_counter), self.draw_ahead
        start = step - step % size
        if self._block is None or self._block[0] != start:
            self._block = (start, *self._inputs(torch.arange(start, start + size, device=self.device)))
        _, x, randomness = self._block
        seeds = _seed_count(self.seed)
        # Chunks are seed-major, one batch per (seed, step): this step's batch of every seed, in seed order.
        take = lambda t: t.unflatten(0, (seeds, size, -1))[:, step - start].flatten(0, 1)
        return take(x), {name: take(value) for name, value in randomness.items()}

    def _forward_backward(self, loss_terms: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``loss_terms()``, then backward of its guarded terms' sum; the terms come back detached."""
        with self._autocast():
            terms = loss_terms()
        self.backward(torch.stack([terms[name].float() for name in self.model.backward_terms]).sum())
        return {name: value.detach() for name, value in terms.items()}

    def _masked_update(self, params: list[torch.Tensor], frozen: torch.Tensor) -> None:
        """The optimiser step, undone on the device wherever ``frozen`` says so (no host decision)."""
        before = [p.detach().clone() for p in params]
        # Adam creates its state on the first step: undoing that step means zero moments and step 0.
        state_before = [t.clone() for t in self._optimizer_state()] if self._state_ready() else None
        for opt in self.optimizers:
            opt.step()
        if state_before is None:
            state_before = [torch.zeros_like(t) for t in self._optimizer_state()]
        with torch.no_grad():
            for now, old in zip(params + self._optimizer_state(), before + state_before):
                now.copy_(torch.where(self._mask(frozen, now), old, now))

    def _mask(self, frozen: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """``frozen`` shaped to broadcast over ``tensor``: per replica on stacked tensors; a shared
        scalar (Adam's step count) stays only when every replica is frozen."""
        if not self.replicas:
            return frozen
        if tensor.ndim == 0 or tensor.shape[0] != self.replicas:
            return frozen.all()
        return frozen.view(-1, *([1] * (tensor.ndim - 1)))

    def _state_ready(self) -> bool:
        return all(len(opt.state) == sum(len(g["params"]) for g in opt.param_groups) for opt in self.optimizers)

    def _autocast(self):
        # Graph capture needs the autocast weight cache off; the same context keeps eager numbers equal.
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; returns this step's terms as device scalars (no synchronisation)."""
        if self.mode == "eager" or self._calls < WARMUP_STEPS:
            self._eager_step()
        elif self._graph is None:
            self._capture_and_check()
        else:
            self._runner.replay(self._graph)
        self._calls += 1
        return self.terms

    def _eager_step(self) -> None:
        if self.mode == "graph":  # warm-up on a side stream, as capture requires
            self._runner.warm_up(self._run_and_clear)
        else:
            self._run_and_clear()

    def _run_and_clear(self) -> None:
        self._program()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _capture(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)  # backward inside the graph allocates the static gradients
        try:
            self._graph = self._runner.capture(self._program)
        finally:
            # Outside the graph no gradient is visible: a Lightning optimizer.step() after a replay is a no-op.
            for p in self._params():
                p.grad = None

    def _capture_and_check(self) -> None:
        """Capture, then run the first replayed step beside an eager computation of the same step."""
        try:
            self._capture()
        except Exception as error:  # noqa: BLE001 - any failure to capture means: train eagerly
            return self._fall_back(f"could not be captured ({_describe(error)})")
        start = self._state()
        self._eager_step()
        eager_values = self._values.clone()
        eager_params = [p.detach().clone() for p in self._params()]
        self._set_state(start)
        try:
            self._runner.replay(self._graph)
            cause = self._disagreement(eager_values, eager_params, start[: len(eager_params)])
        except Exception as error:  # noqa: BLE001
            cause = f"failed on its first replay ({_describe(error)})"
        if cause is not None:
            self._set_state(start)  # the replay's update is undone; the step runs again, eagerly
            self._fall_back(cause)

    def _live_state(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, optimiser state, counters, the divergence record, the terms."""
        return (
            self._params() + self._optimizer_state() + [self.step_counter, self.bad_step, self.bad_values, self._values]
        )

    def _state(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._live_state()]

    def _set_state(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for now, old in zip(self._live_state(), saved, strict=True):
                now.copy_(old)

    def _disagreement(
        self, eager_values: torch.Tensor, eager_params: list[torch.Tensor], before: list[torch.Tensor]
    ) -> str | None:
        """Why the replayed step cannot be trusted, or None: a non-finite term where the eager one is
        finite, terms apart by more than float rounding, or weights updated differently."""
        graph_values = self._values
        names = list(self.terms)
        finite = torch.isfinite(eager_values)
        broken = finite & ~torch.isfinite(graph_values)
        first_term = lambda mask: int(mask.reshape(len(mask), -1).any(1).nonzero()[0])  # [V] or [V, R] -> a term
        if bool(broken.any()):
            return f"gave a non-finite {names[first_term(broken)]} where the eager step's is finite"
        rtol = 2e-2 if self.autocast_dtype is not None else 1e-3
        apart = finite & ((graph_values - eager_values).abs() > 1e-5 + rtol * eager_values.abs())
        if bool(apart.any()):
            i = first_term(apart)
            return (
                f"disagreed with the eager step ({names[i]} {graph_values[i].tolist()} against "
                f"{eager_values[i].tolist()})"
            )
        # Per weight tensor, the elements the replay moved more than half their eager update away. A wrong
        # graph (a stale input, an update lost or doubled) moves most of a tensor; cuDNN's atomics may flip
        # the few elements whose gradient is only rounding noise, which Adam scales to a full update.
        for k, (p, e, b) in enumerate(zip(self._params(), eager_params, before)):
            off = (p.detach() - e).abs() > 0.5 * (e - b).abs() + 1e-7
            count = int(off.sum())
            if count > max(1, 0.01 * off.numel()):
                return (
                    f"disagreed with the eager step (weight tensor {k}: {count} of {off.numel()} elements "
                    "more than half their update apart)"
                )
        return None

    def _fall_back(self, cause: str) -> None:
        """Eager from this step on, with the same keyed numbers; or stop, when graph mode was asked for."""
        step = int(self.step_counter)
        if not self.fallback_allowed:
            raise SBVAEError(
                f"the CUDA graph step {cause} at step {step}; use step_mode auto (which then trains eagerly) or eager."
            )
        self.fallback = f"the CUDA graph step {cause} at step {step}"
        warnings.warn(f"step_mode auto: {self.fallback}; training goes on with eager steps.", stacklevel=3)
        self.mode, self._graph = "eager", None
        self._eager_step()

    # -- divergence, read by the host -----------------------------------------------------------
    def first_bad_step(self) -> tuple[int, dict[str, float]] | None:
        """(step, the terms at that step) of the first divergent step, or None; one host synchronisation."""
        step = int(self.bad_step)
        if step < 0:
            return None
        return step, dict(zip(self.terms, self.bad_values.tolist()))


class CudaGraphRunner:
    """How a graph engine warms up, captures and replays its step on CUDA (tests give the engine a stand-in)."""

    def __init__(self):
        self._side: torch.cuda.Stream | None = None

    def warm_up(self, run: Callable[[], None]) -> None:
        # Capture requires the warm-up on a side stream; one for every warm-up step, since the caching
        # allocator keeps each stream's blocks apart.
        if self._side is None:
            self._side = torch.cuda.Stream()
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            run()
        torch.cuda.current_stream().wait_stream(self._side)

    def capture(self, program: Callable[[], None]) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        before = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                program()
        except Exception:
            # A failed capture_end() leaves torch.cuda.graph's capture stream current; the eager steps that
            # follow must run on the stream they ran on before.
            torch.cuda.set_stream(before)
            raise
        return graph

    def replay(self, graph: torch.cuda.CUDAGraph) -> None:
        graph.replay()


graph_runner: Callable[[], CudaGraphRunner] = CudaGraphRunner


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _describe(error: BaseException) -> str:
    """The first exception of a chain, then the one that reached us: a capture invalidated inside
    ``torch.cuda.graph`` raises again from its exit ("capture invalidated"), and the first one is the cause."""
    first, seen = error, {id(error)}
    while first.__context__ is not None and id(first.__context__) not in seen:
        first = first.__context__
        seen.add(id(first))
    text = f"{type(first).__name__}: {_first_line(first)}"
    return text if first is error else f"{text}; then {type(error).__name__}: {_first_line(error)}"


def normalised_device(device) -> torch.device:
    """``cuda`` as ``cuda:<current index>``: tensors report their device with its index, and
    ``torch.device("cuda") == torch.device("cuda:0")`` is False, so an unindexed device would miss every
    optimiser state tensor the divergence guard must snapshot."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _nothing_to_check() -> None:
    pass


def _lay_out_state_like_weights(optimizers: list[torch.optim.Optimizer]) -> None:
    """Give each optimiser moment its weight's memory layout.  The CPU's fused Adam walks a weight, its
    gradient and its moments as flat memory, so moments restored in another layout (a run trained on a GPU,
    in the plain layout, resumed on a CPU, which trains channels-last) would be read scrambled."""
    for opt in optimizers:
        for p, state in opt.state.items():
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def draw_ahead_for(device: torch.device, mode: str, seed) -> int:
    """Steps whose inputs the engine draws at once: on the CPU, about eight batches per draw (a draw is
    small operations whose fixed cost outweighs their work; measured 5% of a DeConv step at 32 px); one
    elsewhere (a CUDA graph draws inside the step)."""
    if torch.device(device).type != "cpu" or mode != "eager":
        return 1
    return max(1, CPU_BATCHES_PER_DRAW // _seed_count(seed))


def step_rows(step: torch.Tensor, seeds: int, rows: int) -> torch.Tensor:
    """Each batch row's training step, laid out as the draws are (seed-major, then step): an input that
    replicas and draw-ahead blocks split along the batch exactly like the images."""
    steps = step.reshape(1, -1, 1)
    return steps.expand(seeds, steps.shape[1], rows // (seeds * steps.shape[1])).reshape(-1)


def _seed_count(seed) -> int:
    """Seeds an engine trains: one, or a tensor of replica seeds."""
    return seed.numel() if isinstance(seed, torch.Tensor) else 1
