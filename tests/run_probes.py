"""Callbacks and a model the run tests load by class path (the tests folder is on sys.path)."""

import copy
import os
import time

import lightning as L

from sbvae import runs
from sbvae.errors import DivergenceError
from sbvae.module import VAE

SEEN: list[dict] = []  # what StatusProbe and SlowSteps read, for the test in the same process
CLOCK = [0.0]  # the training clock that Clock advances; a test patches sbvae.callbacks.monotonic to read it


class StatusProbe(L.Callback):
    """Records the run's effective state as the first training step starts."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not SEEN:
            SEEN.append(runs.run_state(trainer.log_dir))


class SlowSteps(L.Callback):
    """Makes each step last ``seconds`` longer, then records the status file as it stands."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
        SEEN.append(runs.read_status(trainer.log_dir))


class Clock(L.Callback):
    """Four minutes of training per step: CLOCK holds the time at which the current step will end."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        CLOCK[0] = 240.0 * (trainer.global_step + 1)


class SendSignal(L.Callback):
    """Sends this process ``signum`` as the step ``at_step`` starts (a scheduler preempting the job)."""

    def __init__(self, signum: int, at_step: int):
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class DivergedOnDevice(VAE):
    """A VAE whose (device-side) divergence record says a step from ``bad_step`` on went bad."""

    def __init__(self, *args, bad_step: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_step = bad_step

    def sync_divergence(self) -> None:
        if self.global_step >= self.bad_step:
            raise DivergenceError(
                f"training diverged at step {self.bad_step} (loss = nan).", self.bad_step, float("nan")
            )


class SignalAllProcesses(L.Callback):
    """Process 0 sends ``signum`` to its whole process group as step ``at_step`` starts: a scheduler
    preempting a multi-process job signals every task."""

    def __init__(self, signum: int, at_step: int):
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.is_global_zero and trainer.global_step == self.at_step:
            os.killpg(os.getpgrp(), self.signum)


class RestoredState(L.Callback):
    """Records copies of the weights and the optimisers' states just before the first step (after any restore)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if SEEN:
            return
        SEEN.append(
            {
                "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
                "optimizer_states": [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers],
            }
        )


class OptimizerSettings(L.Callback):
    """Records each optimiser's param-group settings and Adam step counts as the first step starts (after a restore)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if SEEN:
            return
        SEEN.append(
            {
                "groups": [
                    [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                    for opt in trainer.optimizers
                ],
                "steps": [s["step"].clone() for opt in trainer.optimizers for s in opt.state.values() if "step" in s],
            }
        )
