"""Each replica's own files under ``<run>/replica_k/``, as a single run writes them: TensorBoard scalars and
pictures, ``checkpoints/last.ckpt`` and ``checkpoints/best-step=N.ckpt`` (by its own val/elbo), both in a single
run's format (``sbvae-eval --ckpt`` and ``--ckpt_path`` take them unchanged), and ``status.json``; and
reading them back on resume.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import threading
import time
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch.utils.tensorboard import SummaryWriter

from sbvae import runs
from sbvae.callbacks import Heartbeat, ImageLogger, exception_status
from sbvae.errors import DivergenceError, SBVAEError
from sbvae.seeds import SEEDS_KEY, seeds_record
from sbvae.trainer_step import engine_status

if TYPE_CHECKING:
    from sbvae.replicas.stacked import ReplicaSet

# A replica's checkpoint written with the set's, renamed to last.ckpt once the set's last.ckpt is in place.
PENDING_CHECKPOINT = ".last.ckpt.pending"
# A replica checkpoint's record of that replica's best so far: (val/elbo, file name in its checkpoints folder).
BEST_KEY = "sbvae_replica_best"


class ReplicaOutputs(L.Callback):
    """Per replica: TensorBoard scalars and pictures, checkpoints and status.json under ``replica_k/``."""

    def __init__(
        self, images: ImageLogger | None = None, keep_best: bool = True, heartbeat_seconds: float | None = None
    ):
        self.images = images or ImageLogger()  # the run's picture settings, drawn for each replica
        self.every_n_steps = self.images.every_n_steps
        self.keep_best = keep_best
        self.heartbeat_seconds = heartbeat_seconds or runs.HEARTBEAT_SECONDS
        self.writers: list[SummaryWriter] = []
        self.best: dict[int, tuple[float, str]] = {}  # this process's replica k -> (val/elbo, its best file's name)
        self._val_round_saved = 0
        self._pending: list[str] = []  # replica checkpoint folders whose pending file awaits the set's commit
        self._superseded: list[str] = []  # best checkpoints to delete at that commit
        # What each of this process's replicas' status.json says; "running" ones get a heartbeat (as a single
        # run's RunStatus gives its own), and the lock keeps the heartbeat from overwriting a final status.
        self._states: dict[int, str] = {}
        self._lock = threading.Lock()
        self._heartbeat = Heartbeat(self.heartbeat_seconds)

    def folder(self, trainer, k: int) -> str:
        """The folder of this process's k-th replica: ``replica_<its index in the whole set>``."""
        return os.path.join(self.log_dir, f"replica_{self.replica_ids[k]}")

    def on_fit_start(self, trainer, module: ReplicaSet) -> None:
        self.started = time.time()
        self.log_dir = trainer.log_dir  # a collective under several processes: asked once, here
        self.replica_ids = module.replica_ids
        self._states, self._trainer, self._module = {}, trainer, module

    def on_train_start(self, trainer, module: ReplicaSet) -> None:
        # Here, not at fit start, the step of a resumed run is restored: a resumed writer drops the events a
        # killed process logged after its checkpoint, as the run's own logger does (continue_in_run_folder),
        # and "running" records carry the restored step.
        purge = trainer.global_step + 1 if trainer.ckpt_path else None
        self.writers = [SummaryWriter(self.folder(trainer, k), purge_step=purge) for k in range(module.num_replicas)]
        frozen = self._diverged(module)
        for k in range(module.num_replicas):
            if k in frozen:  # a replica that diverged before the resumed checkpoint stays so
                self._mark_diverged(trainer, module, k, frozen[k])
            else:
                self._status(trainer, module, k, "running")
        # Each process's share keeps its own best in its replicas' files: the set's checkpoint is written by
        # process 0 and describes only its share, so it carries no callback state to restore.
        self.best = dict(getattr(module, "best_on_resume", {}))
        self._heartbeat.start(self._beat, "sbvae-replica-heartbeat")

    def _status(self, trainer, module, k: int, status: str, **extra) -> None:
        folder = self.folder(trainer, k)
        with self._lock:
            os.makedirs(folder, exist_ok=True)
            runs.write_status(
                folder,
                status,
                trainer.global_step,
                self.started,
                seed=module.seeds[k],
                **engine_status(module),
                **extra,
            )
            self._states[k] = status

    def _beat(self) -> None:
        """Refresh the records of this process's running replicas (the heartbeat's call)."""
        for k in list(self._states):
            with self._lock:
                if self._states.get(k) == "running":
                    runs.write_status(
                        self.folder(self._trainer, k),
                        "running",
                        self._trainer.global_step,
                        self.started,
                        seed=self._module.seeds[k],
                        **engine_status(self._module),
                    )

    def _diverged(self, module: ReplicaSet) -> dict[int, int]:
        """Replica -> the step it diverged at: from the engine, or before it exists from the resumed files."""
        if module.engine is None:
            return dict(getattr(module, "_frozen_at", {}))
        return {k: step for k, step in enumerate(module.engine.bad_step.tolist()) if step >= 0}

    def on_train_batch_end(self, trainer, module: ReplicaSet, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0:
            values = {name: v.tolist() for name, v in module.last_terms.items()}  # one synchronisation
            frozen = self._diverged(module)
            for k, writer in enumerate(self.writers):
                if k not in frozen:
                    for name, v in values.items():  # at Lightning's index for it, as a single run's log has it
                        writer.add_scalar(f"train/{name}", v[k], step - 1)
            for k, bad in frozen.items():
                self._mark_diverged(trainer, module, k, bad)
            live = module.num_replicas - len(frozen)
            if trainer.world_size > 1:  # the other processes' replicas count too (every process logs at this step)
                live = int(
                    trainer.strategy.reduce(torch.tensor(live, device=trainer.strategy.root_device), reduce_op="sum")
                )
            if live == 0:
                raise_all_diverged(frozen)
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._pictures(trainer, module)

    def _mark_diverged(self, trainer, module, k: int, step: int) -> None:
        if (runs.read_status(self.folder(trainer, k)) or {}).get("status") == "diverged":
            return
        self._status(
            trainer,
            module,
            k,
            "diverged",
            step=step,
            message=(
                f"replica {self.replica_ids[k]} (seed {module.seeds[k]}) diverged at step {step}; it was frozen there and its last good "
                "checkpoint is kept."
            ),
        )

    def _pictures(self, trainer, module: ReplicaSet) -> None:
        if trainer.global_step == getattr(self, "_pictured_step", None):
            return  # the last step's pictures, drawn already by the interval: once, as a single run has them
        self._pictured_step = trainer.global_step
        for k, writer in enumerate(self.writers):
            with torch.no_grad():
                self.images.draw(writer, trainer, module.replica_model(k), trainer.global_step)

    def on_validation_end(self, trainer, module: ReplicaSet) -> None:
        if trainer.sanity_checking or not hasattr(module, "val_terms"):
            return
        values = {n: v.tolist() for n, v in module.val_terms.items()}
        frozen = self._diverged(module)
        for k, writer in enumerate(self.writers):
            for name, v in values.items():
                if k not in frozen:  # a diverged replica's curves end where a single run's would
                    writer.add_scalar(f"val/{name}", v[k], trainer.global_step - 1)  # a single run's index for it

    def on_train_end(self, trainer, module: ReplicaSet) -> None:
        self._heartbeat.stop()
        frozen = self._diverged(module)
        self._pictures(trainer, module)
        for k in range(module.num_replicas):
            if k in frozen:
                self._mark_diverged(trainer, module, k, frozen[k])
            else:
                self._status(trainer, module, k, "completed")
        for writer in self.writers:
            writer.close()
        self.writers = []
        done = module.num_replicas - len(frozen)
        where = f"process {trainer.global_rank}: " if trainer.world_size > 1 else ""
        print(
            f"sbvae-train: {where}{done} of {module.num_replicas} replicas completed, {len(frozen)} diverged"
            + (f" (replicas {sorted(self.replica_ids[k] for k in frozen)})" if frozen else "")
            + "."
        )
        if trainer.world_size > 1:
            counts = torch.tensor([done, len(frozen)], device=trainer.strategy.root_device)
            done, diverged = (int(v) for v in trainer.strategy.reduce(counts, reduce_op="sum").tolist())
            if trainer.is_global_zero:
                print(f"sbvae-train: {done} of {len(module.all_seeds)} replicas completed, {diverged} diverged.")
        if done == 0:
            raise_all_diverged(frozen)

    # -- checkpoints: each save of the set (on validation, on time, on a signal, at the end) is also each replica's
    def on_save_checkpoint(self, trainer, module: ReplicaSet, checkpoint: dict) -> None:
        frozen = self._diverged(module)  # a frozen replica keeps its last good checkpoint
        self._pending, self._superseded = [], []  # what an earlier save left uncommitted is written again
        fresh = getattr(module, "val_round", 0) != self._val_round_saved
        elbo = module.val_terms["elbo"].tolist() if fresh else []
        self._val_round_saved = getattr(module, "val_round", 0)
        for k in range(module.num_replicas):
            if k in frozen:  # its status says so before any resume could read the set's newer checkpoint
                self._mark_diverged(trainer, module, k, frozen[k])
                continue
            folder = os.path.join(self.folder(trainer, k), "checkpoints")
            replica = replica_checkpoint(checkpoint, module, k)
            previous = self.best.get(k)
            improved = self.keep_best and fresh and elbo[k] < (previous or (float("inf"), ""))[0]
            if improved:  # the single run's ModelCheckpoint name, by the same val/elbo
                self.best[k] = (elbo[k], f"best-step={trainer.global_step}.ckpt")
            if k in self.best:  # the replica's own record of its best, read back on resume (see best_on_resume)
                replica[BEST_KEY] = list(self.best[k])
            if improved:
                _save(replica, os.path.join(folder, self.best[k][1]))
                if previous and previous[1] != self.best[k][1]:
                    self._superseded.append(os.path.join(folder, previous[1]))
            _save(replica, os.path.join(folder, PENDING_CHECKPOINT))
            self._pending.append(folder)

    def commit_checkpoint(self) -> None:
        """Called once the set's last.ckpt is in place (and every process agreed it was written): each
        replica's pending checkpoint becomes its last.ckpt.  Replica files thus never get ahead of the set's,
        and a process killed in between leaves pending files that the resume takes (``on_load_checkpoint``)."""
        for folder in self._pending:
            try:
                os.replace(os.path.join(folder, PENDING_CHECKPOINT), os.path.join(folder, runs.LAST_CHECKPOINT))
            except OSError as error:
                raise runs.write_failure(folder, error, runs.LAST_CHECKPOINT) from error
        for path in self._superseded:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._pending, self._superseded = [], []

    def on_fit_end(self, trainer, module: ReplicaSet) -> None:
        # A resume at max_steps skips the training loop (no on_train_end): its replicas are done all the same.
        self._heartbeat.stop()
        frozen = self._diverged(module)
        for k, status in list(self._states.items()) or [(k, "running") for k in range(module.num_replicas)]:
            if status == "running":
                if k in frozen:
                    self._mark_diverged(trainer, module, k, frozen[k])
                else:
                    self._status(trainer, module, k, "completed")

    def on_exception(self, trainer, module: ReplicaSet, exception: BaseException) -> None:
        self._heartbeat.stop()
        status, record = exception_status(exception)
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.close()
        self.writers = []
        for k, now in list(self._states.items()):
            if now == "running":  # diverged and completed replicas keep their records
                with contextlib.suppress(OSError):
                    self._status(trainer, module, k, "failed" if status == "diverged" else status, **record)

    def teardown(self, trainer, module, stage: str) -> None:
        self._heartbeat.stop()


def _save(checkpoint: dict, path: str) -> None:
    # Serialised in memory, then written as bytes: a full disk raises OSError (the one error the checkpoint
    # callback turns into its message and agrees on across processes), where torch.save raises RuntimeError.
    data = io.BytesIO()
    torch.save(checkpoint, data)
    with runs.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.getbuffer())


def replica_checkpoint(checkpoint: dict, module: ReplicaSet, k: int) -> dict:
    """Replica k's part of the set's checkpoint, in a single run's format (weights, Adam state, loops, seeds)."""
    out = dict(checkpoint)
    out["state_dict"] = module.replica_state_dict(k)
    out["optimizer_states"] = [_slice_optimizer_state(s, k) for s in checkpoint["optimizer_states"]]
    out["hyper_parameters"] = dict(module.model_hparams)
    out["hparams_name"] = "kwargs"
    out["datamodule_hyper_parameters"] = {**dict(checkpoint["datamodule_hyper_parameters"]), "seed": module.seeds[k]}
    out[SEEDS_KEY] = seeds_record(module.seeds[k], module.seeds[k])  # a resume alone draws replica k's streams
    out["sbvae_model_class"] = f"{module.model_class.__module__}.{module.model_class.__qualname__}"
    out.pop("callbacks", None)  # the set's callback states do not describe one replica
    return out


def _slice_optimizer_state(state: dict, k: int) -> dict:
    """Replica k's part of an optimiser state over stacked parameters (the step counter is shared)."""
    out = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {}}
    for index, per_param in state["state"].items():
        out["state"][index] = {
            name: (v[k].clone() if torch.is_tensor(v) and v.ndim > 0 else v) for name, v in per_param.items()
        }
    return out


def raise_all_diverged(frozen: dict[int, int]):
    step = min(frozen.values())
    raise DivergenceError(
        f"every replica diverged (first at step {step} here); each one's last good checkpoint is kept in "
        "replica_K/checkpoints/last.ckpt (resuming the set keeps them frozen): train on from one as a single run "
        "(--ckpt_path that file, which keeps its seed) with a lower learning rate, or use other seeds, or "
        "--model.init_args.likelihood gaussian.",
        step=step,
        value=float("nan"),
    )


def read_replica_checkpoints(run: str, replica_ids: list[int], step: int | None):
    """What this process's replicas resume from, each from its own ``replica_k/`` files (the set's checkpoint
    under several processes holds process 0's share only): (each replica's checkpoint, None for one that
    diverged before its first; {replica: the step it diverged at}; {replica: (its best val/elbo, file name)})."""
    states, frozen, best = [], {}, {}
    for k, g in enumerate(replica_ids):
        folder = os.path.join(run, f"replica_{g}")
        path = os.path.join(runs.checkpoint_dir(folder), runs.LAST_CHECKPOINT)
        record = runs.read_status(folder) or {}
        if record.get("status") == "diverged":
            frozen[k] = int(record.get("step", record.get("global_step", 0)))
        if not os.path.isfile(path) and k in frozen:  # diverged before its first checkpoint: its first weights
            states.append(None)
            continue
        ckpt = None if k in frozen else _pending_of_this_step(runs.checkpoint_dir(folder), step)
        ckpt = ckpt or runs.load_checkpoint(path)
        if k not in frozen and ckpt.get("global_step") != step:
            raise SBVAEError(
                f"{path} is at step {ckpt.get('global_step')} but the run's checkpoint at step "
                f"{step}: resume from a run folder whose files were written together."
            )
        states.append(ckpt)
        if BEST_KEY in ckpt:
            best[k] = (float(ckpt[BEST_KEY][0]), str(ckpt[BEST_KEY][1]))
    return states, frozen, best


def _pending_of_this_step(folder: str, step: int | None) -> dict | None:
    """A replica checkpoint written with the set's checkpoint of ``step`` but not yet renamed to last.ckpt
    (the process stopped in between): it becomes last.ckpt now. None when there is no such file."""
    pending = os.path.join(folder, PENDING_CHECKPOINT)
    if not os.path.isfile(pending):
        return None
    ckpt = runs.load_checkpoint(pending)
    if ckpt.get("global_step") != step:
        return None  # a save that never committed: the set's last.ckpt is older
    # Every commit renames the pending file away, so one of the set's step is the newest file of that step
    # (a second save at the same step, a validation after a timed save, may have a newer best in it).
    os.replace(pending, os.path.join(folder, runs.LAST_CHECKPOINT))
    return ckpt
