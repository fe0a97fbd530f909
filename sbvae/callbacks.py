"""Lightning callbacks: pictures and metrics in TensorBoard, last.ckpt kept current, and the run's status.json."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from time import monotonic
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sbvae import runs
from sbvae.errors import DivergenceError, Preempted, SBVAEError
from sbvae.trainer_step import engine_status
from sbvae.visualize import latent_order, reconstruction_grid, traversal_grid

# Under DDP, how often the processes agree on a time-based save or a signal (each agreement syncs the devices).
AGREE_EVERY_N_STEPS = 10


def tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None when there is none."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageLogger(L.Callback):
    """Logs ``reconstructions`` and ``traversals/seed_i`` every ``every_n_steps`` and at the end of fit.

    The images are a fixed slice of the validation set, so successive pictures are comparable.

    Args:
        every_n_steps: interval in optimiser steps (0: only at the end of fit).
        num_images: images in the reconstruction grid.
        num_seeds: seed images for traversals (one grid each; 0: no traversals).
        steps: columns of a traversal (values from -limit to +limit).
        limit: traversal range around zero (paper: 2).
        order_images: images used to rank latents by mean posterior variance.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_images: int = 8,
        num_seeds: int = 2,
        steps: int = 9,
        limit: float = 2.0,
        order_images: int = 256,
    ):
        if min(num_images, steps, order_images) < 1 or min(num_seeds, every_n_steps) < 0 or limit <= 0:
            raise SBVAEError(
                "images: num_images, steps and order_images must be at least 1, num_seeds and every_n_steps at "
                f"least 0 (every_n_steps 0: only at the end of fit) and limit above 0; got {num_images}, {steps}, "
                f"{order_images}, {num_seeds}, {every_n_steps} and {limit}."
            )
        self.every_n_steps, self.num_images, self.num_seeds = every_n_steps, num_images, num_seeds
        self.steps, self.limit, self.order_images = steps, limit, order_images
        self._images: torch.Tensor | None = None
        self._logged_step = -1

    def _fixed_images(self, trainer: L.Trainer, device: torch.device) -> torch.Tensor:
        if self._images is None or self._images.device != device:
            dm = trainer.datamodule
            n = max(self.num_images, self.num_seeds, self.order_images)
            factors = dm.validation_factors()[:n].to(device)
            self._images = dm.render_fixed(factors, torch.arange(len(factors)))
        return self._images

    @rank_zero_only
    def log_pictures(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or trainer.datamodule is None or trainer.global_step == self._logged_step:
            return
        self._logged_step = trainer.global_step
        was_training = module.training
        module.eval()
        try:
            self.draw(writer, trainer, module, trainer.global_step)
        finally:
            module.train(was_training)

    def draw(self, writer, trainer: L.Trainer, module: L.LightningModule, step: int) -> None:
        """This logger's pictures of ``module`` (in eval mode) at ``step``: reconstructions and traversals."""
        x = self._fixed_images(trainer, module.device)
        writer.add_image("reconstructions", reconstruction_grid(module, x[: self.num_images]), step)
        order = latent_order(module, x[: self.order_images])
        for i in range(self.num_seeds):
            grid = traversal_grid(module, x[i], order, steps=self.steps, limit=self.limit)
            writer.add_image(f"traversals/seed_{i}", grid, step)
        writer.flush()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_pictures(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        self.log_pictures(trainer, module)


class LastCheckpoint(L.Callback):
    """Keeps ``checkpoints/last.ckpt`` the latest state, so that a run stopped at any moment loses little.

    It is written after every validation, every ``every_n_minutes`` of training, at the end of fit, and
    when SIGTERM or SIGUSR1 arrives (preemption; SLURM's ``--signal``): training then stops, the status
    says "interrupted" and sbvae-train exits with 128 + the signal number. (Lightning's ``save_last`` only
    writes when a monitored checkpoint is written, so after a validation that did not improve it is stale.)
    Each write goes to a temporary name renamed over last.ckpt, so a failed write (full disk) leaves the
    previous one intact, and no checkpoint is written once the module reports divergence.

    Args:
        every_n_minutes: minutes of training wall time between time-based writes; 0 turns them off.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, every_n_minutes: float = 10.0):
        if not every_n_minutes >= 0:
            raise SBVAEError(
                f"last_checkpoint.every_n_minutes must be >= 0 (0: no time-based checkpoints), got {every_n_minutes}."
            )
        self.every_n_minutes = every_n_minutes
        self._last_write = 0.0
        self._signal: int | None = None
        self._replaced_handlers: dict[int, Any] = {}

    # -- when ----------------------------------------------------------------------------------
    def on_train_start(self, trainer, module) -> None:
        self._last_write = monotonic()
        self._signal = None
        # Installed here, after Lightning registered its own SIGTERM handler: that one stops each process
        # at whatever step it happens to be in, without a checkpoint.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._replaced_handlers[signum] = signal.signal(signum, self._on_signal)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        # Lightning moves its logging index one ahead of the step when a run resumes from a checkpoint at an
        # epoch's end (Lightning issue #19617), and the resumed curves skip a step. Every batch is one
        # optimiser step here, so the index is the step, as in the uninterrupted run.
        epoch_loop = trainer.fit_loop.epoch_loop
        if getattr(epoch_loop, "_batches_that_stepped", trainer.global_step) != trainer.global_step:
            epoch_loop._batches_that_stepped = trainer.global_step

    def _on_signal(self, signum: int, frame) -> None:
        self._signal = signum  # acted on at the end of the step: a handler must not save mid-step

    def _restore_handlers(self) -> None:
        for signum, handler in self._replaced_handlers.items():
            signal.signal(signum, handler)
        self._replaced_handlers = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        due = self.every_n_minutes > 0 and monotonic() - self._last_write >= 60 * self.every_n_minutes
        signum = self._signal or 0
        if trainer.world_size > 1:
            # Every process must save, or stop, at the same step. Agreeing is a collective (a device sync),
            # so it is done every few steps only.
            if trainer.global_step % AGREE_EVERY_N_STEPS:
                return
            flags = torch.tensor([float(due), float(signum)], device=trainer.strategy.root_device)
            due, signum = (int(v) for v in trainer.strategy.reduce(flags, reduce_op="max").tolist())
        if not (due or signum):
            return
        path = self._write(trainer)
        if signum:
            name, step = signal.Signals(signum).name, trainer.global_step
            raise Preempted(
                f"{name} stopped training at step {step}, saved in {path}: continue with --ckpt_path {path}.",
                signum,
                step,
            )

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write(trainer)

    def on_train_end(self, trainer, module) -> None:
        self._restore_handlers()
        self._write(trainer)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self._restore_handlers()

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        # Every save of the trainer (this one's, the best checkpoint's) passes here before its file is written.
        # On an accelerator a bad step is only recorded on the device; this raises DivergenceError for it.
        sync_divergence = getattr(module, "sync_divergence", None)
        if sync_divergence is not None:
            sync_divergence()

    # -- how -----------------------------------------------------------------------------------
    def _write(self, trainer: L.Trainer) -> str:
        folder = runs.checkpoint_dir(trainer.log_dir)  # log_dir is a collective: every process calls it
        final = os.path.join(folder, runs.LAST_CHECKPOINT)
        partial = os.path.join(folder, f".{runs.LAST_CHECKPOINT}.partial")  # one name: process 0 writes it
        failure = None
        if trainer.is_global_zero:
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK):  # Lightning's save ignores a PermissionError
                failure = PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder)
        try:
            # Process 0 writes the set's file; every process writes what its callbacks add (replicas' files).
            trainer.save_checkpoint(partial, weights_only=False)
        except OSError as error:
            failure = error
            trainer.strategy.barrier("Trainer.save_checkpoint")  # the one save_checkpoint skipped by raising
        # Every process wrote its part, or nothing is renamed: a file that commits the step while another
        # process's part of it is missing would make the run impossible to resume.
        self._agree(
            trainer,
            failure,
            folder,
            final,
            partial,
            "another process could not write its part of "
            f"this checkpoint (its message says why); {final} is intact: resume from it with --ckpt_path.",
        )
        if trainer.is_global_zero:
            try:
                os.replace(partial, final)
            except OSError as error:
                failure = error
        self._agree(
            trainer, failure, folder, final, partial, f"process 0 could not write {final}; its message says why."
        )
        for callback in trainer.callbacks:  # files written with this checkpoint that wait for it (replicas')
            commit = getattr(callback, "commit_checkpoint", None)
            if commit is not None:
                commit()
        self._last_write = monotonic()
        return final

    @staticmethod
    def _agree(trainer, failure: OSError | None, folder: str, final: str, partial: str, elsewhere: str) -> None:
        """Raise on every process if any process failed (its own message where it failed, ``elsewhere``
        on the others); process 0 removes the set's unfinished file."""
        if not trainer.strategy.reduce_boolean_decision(failure is not None, all=False):
            return
        if trainer.is_global_zero:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        if failure is None:
            raise SBVAEError(elsewhere)
        raise runs.write_failure(folder, failure, runs.LAST_CHECKPOINT, final if os.path.exists(final) else None)


def exception_status(exception: BaseException) -> tuple[str, dict]:
    """The status.json record of a run that ``exception`` stopped: diverged, interrupted or failed."""
    if isinstance(exception, DivergenceError):
        return "diverged", dict(step=exception.step, value=exception.value, message=str(exception))
    if isinstance(exception, Preempted):
        return "interrupted", dict(signal=signal.Signals(exception.signum).name, message=str(exception))
    if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
        return "interrupted", dict(signal="SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM")
    return "failed", dict(message=f"{type(exception).__name__}: {exception}")


class Heartbeat:
    """Calls ``beat`` every ``seconds`` from a daemon thread until ``stop()``: a status file's heartbeat, which
    training pays nothing for and a long validation does not silence. ``beat`` takes its owner's lock, so
    that a final status written under it is never overwritten."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, beat, name: str) -> None:
        def loop() -> None:
            while not self._stop.wait(self.seconds):
                with contextlib.suppress(OSError):  # a full disk is reported by the next checkpoint
                    beat()

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class RunStatus(L.Callback):
    """Keeps ``status.json`` in the run folder: running, completed, interrupted, diverged or failed.

    Process 0 writes it at the start and the end of fit and, while running, refreshes its ``heartbeat``
    every ``heartbeat_seconds`` from a background thread (training pays nothing for it, and a long
    validation does not silence it). ``sbvae.runs.run_state`` reads a "running" whose process is gone as
    "interrupted"; sweeps count diverged runs from it (the paper lost ~15% of FactorVAE seeds).
    """

    def __init__(self, heartbeat_seconds: float | None = None):
        self.heartbeat_seconds = heartbeat_seconds or runs.HEARTBEAT_SECONDS
        self._trainer: L.Trainer | None = None
        self._folder, self._started = "", 0.0
        self._lock = threading.Lock()
        self._heartbeat = Heartbeat(self.heartbeat_seconds)

    def _write(self, status: str, **extra) -> None:
        with self._lock:
            runs.write_status(
                self._folder,
                status,
                self._trainer.global_step,
                self._started,
                **engine_status(self._trainer.lightning_module),
                **extra,
            )

    def _open(self, trainer: L.Trainer) -> None:
        # The logger's folder, not trainer.log_dir: that one is a collective broadcast, and this runs
        # on process 0 alone (and in on_exception, when other processes may be gone).
        logger = trainer.loggers[0] if trainer.loggers else None
        self._folder = logger.log_dir if logger is not None and logger.log_dir else trainer.default_root_dir
        self._trainer, self._started = trainer, time.time()
        os.makedirs(self._folder, exist_ok=True)

    def on_fit_start(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        try:
            self._open(trainer)
            self._write("running")
        except OSError as error:
            raise runs.write_failure(self._folder, error, runs.STATUS_FILE) from error
        self._heartbeat.start(lambda: self._write("running"), "sbvae-heartbeat")

    def on_train_start(self, trainer, module) -> None:
        if self._heartbeat.running:
            self._write("running")  # with the step restored from a resumed checkpoint

    def _finish(self, trainer: L.Trainer, status: str, **extra) -> None:
        if not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        self._heartbeat.stop()
        if self._trainer is None:  # failed before fit started
            self._open(trainer)
        try:
            self._write(status, **extra)
        finally:
            self._trainer = None

    def on_fit_end(self, trainer, module) -> None:
        self._finish(trainer, "completed")

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        status, record = exception_status(exception)
        with contextlib.suppress(OSError):  # the error being raised matters more than its record
            self._finish(trainer, status, **record)

    def teardown(self, trainer, module, stage: str) -> None:
        self._heartbeat.stop()  # in case fit ended through neither on_fit_end nor on_exception


class MetricsCallback(L.Callback):
    """Computes disentanglement metrics every ``every_n_steps`` (and at the end of fit) and logs ``metrics/<name>``.

    Runs on the global-zero process only and writes straight to TensorBoard, so DDP ranks never wait on it.

    Args:
        metrics: names from ``sbvae.evaluation.METRICS`` (e.g. ["mig", "irs"]); not UDR, which ranks a group of seeds.
        every_n_steps: interval in optimiser steps (0: only at the end of fit).
        preset: "quick" (small sizes, cheap) or "paper" (disentanglement_lib's sizes).
        seed: the evaluation seed (the same points every time, so curves are comparable).
    """

    # A list default: LightningCLI shows it in --help; parse_metrics copies it, so it is never mutated.
    def __init__(self, metrics: list[str] = ["mig"], every_n_steps: int = 10000, preset: str = "quick", seed: int = 0):  # noqa: B006
        from sbvae.evaluation import PRESETS, parse_metrics, refuse_group_metrics

        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}.")
        self.metrics, self.every_n_steps, self.preset, self.seed = parse_metrics(metrics), every_n_steps, preset, seed
        refuse_group_metrics(self.metrics, "the one model MetricsCallback watches")
        self._scored_step = -1

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from sbvae.evaluation import scalars, score

        if trainer.global_step == self._scored_step:  # the last step was already scored
            return
        self._scored_step = trainer.global_step
        writer = tensorboard(trainer)
        results = score(module, trainer.datamodule.data, self.metrics, self.preset, self.seed, module.device)
        if writer is not None:
            for tag, value in scalars(results).items():
                writer.add_scalar(f"metrics/{tag}", value, trainer.global_step)
            writer.flush()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.evaluate(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        self.evaluate(trainer, module)
