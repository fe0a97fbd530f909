"""Replica-parallel training: R seeds of one configuration trained in one process, as one program.

Replica k is the run ``--seed_everything base + k`` would have been: its initial weights are built under
that seed, its data, colours and posterior noise come from the keyed streams of that seed, and Adam
over the stacked parameters is elementwise, hence exactly per-replica Adam.  The replicas' parameters
are stacked (``torch.func.stack_module_state``) and one ``vmap`` of the plain model's ``loss_terms``
runs them all, so each kernel launch does R models' work.  ``sbvae.engine`` runs the step; a replica
whose loss diverges is frozen alone.

Each replica writes what a single run writes, under ``<run>/replica_k/``: TensorBoard scalars and
pictures, ``checkpoints/last.ckpt`` and ``checkpoints/best-step=N.ckpt`` (by its own val/elbo), both in a
single run's format (``sbvae-eval --ckpt`` and ``--ckpt_path`` take them unchanged), and ``status.json``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import threading
import time

import lightning as L
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.utils.tensorboard import SummaryWriter

from sbvae.callbacks import Heartbeat, ImageLogger, exception_status
from sbvae.engine import Engine, counted_step, engine_for, engine_status
from sbvae.errors import DivergenceError, SBVAEError
from sbvae.metrics.latents_used import count_used
from sbvae.module import VAE, adam, refuse_fp16, wants_channels_last
from sbvae import runs

# A replica's checkpoint written with the set's, renamed to last.ckpt once the set's last.ckpt is in place.
PENDING_CHECKPOINT = ".last.ckpt.pending"
# A replica checkpoint's record of that replica's best so far: (val/elbo, file name in its checkpoints folder).
BEST_KEY = "sbvae_replica_best"


class _Call(nn.Module):
    """Makes one of the model's methods the forward of a module, so ``functional_call`` runs it on given weights."""

    def __init__(self, model: VAE, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.method)(*args, **kwargs)


def _flat(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold dots


class ReplicaSet(L.LightningModule):
    """R copies of ``template``'s configuration, replica k initialised under seed ``seeds[k]``."""

    def __init__(self, template: VAE, seeds: list[int], vectorize: bool | None = None):
        super().__init__()
        # None: one vmap over the replicas on accelerators; on the CPU a loop over them, which measured
        # faster per image there (vmapped convolutions become grouped ones, slow on the CPU).
        self.vectorize = vectorize
        if len(set(seeds)) != len(seeds):
            raise SBVAEError(f"replica seeds must differ, got {seeds}.")
        self.all_seeds = list(seeds)
        self.model_class = type(template)
        # LightningCLI adds private keys (_class_path, ...) that are no constructor arguments.
        self.model_hparams = {k: v for k, v in template.hparams.items() if not k.startswith("_")}
        self.backward_terms = template.backward_terms
        self.engine: Engine | None = None
        self.automatic_optimization = False
        self._build(list(range(len(seeds))))

    def _build(self, replica_ids: list[int]) -> None:
        """Stack freshly initialised models for replicas ``replica_ids`` (indices into ``all_seeds``)."""
        self.replica_ids = list(replica_ids)
        self.seeds = [self.all_seeds[i] for i in replica_ids]
        models = []
        for seed in self.seeds:
            torch.manual_seed(seed)  # what seed_everything(seed) does before the single run builds its model
            models.append(self.model_class(**self.model_hparams))
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.stacked = nn.ParameterDict({_flat(n): nn.Parameter(p) for n, p in params.items()})
        for n, b in buffers.items():
            self.register_buffer("buffer__" + _flat(n), b)
        self.buffer_names = list(buffers)
        # The template only lends its code to functional_call: its own weights live on no device.
        meta = copy.deepcopy(models[0]).to("meta")
        object.__setattr__(self, "_loss_of", _Call(meta, "loss_terms"))
        object.__setattr__(self, "_terms_of", _Call(meta, "per_image_terms"))
        object.__setattr__(self, "_proto", models[0])

    def setup(self, stage: str) -> None:
        """With several processes, keep this process's share of the replicas: contiguous blocks, process r
        training replicas ``shares(R, world)[r]`` (folders replica_k keep the global index k)."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world > 1 and len(self.replica_ids) == len(self.all_seeds):
            share = shares(len(self.all_seeds), world)[rank]
            if not share:
                raise SBVAEError(f"--replicas {len(self.all_seeds)} over {world} processes leaves process {rank} "
                                 f"nothing to train: ask for at least {world} replicas, or fewer devices.")
            self._build(share)

    @property
    def num_replicas(self) -> int:
        return len(self.seeds)

    # -- one replica as a plain model ----------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        out = {"model." + n: self.stacked[_flat(n)] for n in self.names}
        out.update({"model." + n: getattr(self, "buffer__" + _flat(n)) for n in self.buffer_names})
        return out

    def replica_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        state = {n: self.stacked[_flat(n)][k].detach().clone() for n in self.names}
        state.update({n: getattr(self, "buffer__" + _flat(n))[k].clone() for n in self.buffer_names})
        return state

    def replica_model(self, k: int) -> VAE:
        """Replica k as the plain LightningModule a single run would have: one shared module, loaded with
        replica k's weights and moved to this device (the next call reloads it)."""
        model = self._proto
        model.load_state_dict(self.replica_state_dict(k))
        return model.to(self.device).eval()

    # -- the objective ---------------------------------------------------------------------------
    def _vectorized(self) -> bool:
        return self.device.type != "cpu" if self.vectorize is None else self.vectorize

    def _split(self, x: torch.Tensor, randomness: dict[str, torch.Tensor]):
        r = self.num_replicas
        split = lambda t: t.reshape(r, t.shape[0] // r, *t.shape[1:])
        return split(x), {k: split(v) for k, v in randomness.items()}

    def _run(self, weights: dict[str, torch.Tensor], x: torch.Tensor, randomness: dict[str, torch.Tensor]):
        return functional_call(self._loss_of, weights, (x,), randomness)

    def _layout(self):
        """A single run's layout on the CPU loop: channels-last images and convolution kernels (a kernel
        slice is already channels-last after ``lay_out_weights``; otherwise this copies it)."""
        if wants_channels_last(self.model_hparams.get("channels_last"), self.device):
            return lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t
        return lambda t: t

    def loss_terms(self, x: torch.Tensor, **randomness: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term as a vector over replicas; ``x`` and the randomness are R chunks of one replica's batch."""
        xs, rs = self._split(x, randomness)
        if self._vectorized():
            return torch.vmap(self._run)(self.weights(), xs, rs)
        layout = self._layout()
        outs = [self._run({n: layout(w[k]) for n, w in self.weights().items()}, layout(xs[k]), {n: v[k] for n, v in rs.items()})
                for k in range(self.num_replicas)]
        return {name: torch.stack([o[name] for o in outs]) for name in outs[0]}

    def loss_pieces(self, x: torch.Tensor, **randomness: torch.Tensor) -> list | None:
        """On the CPU loop, one replica's ``loss_terms`` per piece, so that the engine runs each replica's
        backward before the next one's forward: one replica's activations are alive at a time (all R at
        once measured about 10% slower per image than single runs, from cache misses).  Each piece runs a
        plain model of its own whose weights are views of the stacked ones and whose gradients are views of
        the stacked gradients, so its backward writes its replica's slice and the engine then only calls
        ``gather_piece_gradients``.  None when vmapped (one piece).
        """
        if self._vectorized():
            return None
        xs, rs = self._split(x, randomness)
        layout = self._layout()
        models = self._replica_models()
        torch._foreach_zero_(list(self._grad_buffers.values()))  # backward adds into the gradient already there
        return [lambda k=k: models[k].loss_terms(layout(xs[k]), **{n: v[k] for n, v in rs.items()})
                for k in range(self.num_replicas)]

    def _replica_models(self) -> list[nn.Module]:
        """Replica k's plain model over views of the stacked weights and gradients, made again whenever the
        stacked tensors were replaced (a move to another device, a new share of the replicas)."""
        weights = self.weights()
        key = tuple(t.data_ptr() for t in weights.values())
        made = self.__dict__.get("_made_models")
        if made is not None and made[0] == key:
            return made[1]
        # laid out like its weight: fused Adam reads a weight and its gradient as flat memory
        grads = self.__dict__["_grad_buffers"] = {n: torch.empty_like(self.stacked[_flat(n)]) for n in self.names}
        models = []
        for k in range(self.num_replicas):
            model = copy.deepcopy(self._proto).train()  # the prototype may have just drawn pictures in eval mode
            for name, stacked in weights.items():
                n = name.removeprefix("model.")
                owner, _, attr = n.rpartition(".")
                module = model.get_submodule(owner)
                if n in grads:
                    module._parameters[attr] = weight = nn.Parameter(stacked.detach()[k])
                    weight.grad = grads[n][k]
                else:
                    module._buffers[attr] = stacked[k]
            models.append(model)
        self.__dict__["_made_models"] = (key, models)
        return models

    def gather_piece_gradients(self) -> None:
        """The replicas' gradients, which their pieces' backward added into slices of the stacked gradients."""
        for n in self.names:
            self.stacked[_flat(n)].grad = self._grad_buffers[n]

    def lay_out_weights(self) -> None:
        """On the CPU loop in channels-last, store each stacked convolution kernel [R, out, in, h, w] so that
        every replica's slice is a channels-last kernel, as a single run's: the replicas' plain models then
        convolve channels-last images with views of the stacked kernels."""
        if self._vectorized() or not wants_channels_last(self.model_hparams.get("channels_last"), self.device):
            return
        for p in self.stacked.values():
            if p.ndim == 5:
                p.data = p.data.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)

    def step_randomness(self, batch_size: int, draw) -> dict[str, torch.Tensor]:
        return self._proto.step_randomness(batch_size, draw)

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        refuse_fp16(self.trainer)

    def on_train_start(self) -> None:
        self.lay_out_weights()
        dm = self.trainer.datamodule
        seeds = torch.tensor(self.seeds, dtype=torch.int64, device=self.device)
        # rank 0 for every process: replica k's streams are those of the single run with its seed.
        self.engine = engine_for(
            self, self.model_hparams.get("step_mode", "auto"), lambda step: dm.training_batch(seeds, 0, step, self.device),
            seed=seeds, rank=0, max_loss=self.model_hparams["max_loss"], replicas=self.num_replicas,
        )
        for k, step in getattr(self, "_frozen_at", {}).items():  # diverged before the resumed checkpoint
            self.engine.bad_step[k] = step

    def training_step(self, batch, batch_idx: int) -> None:
        self.last_terms = counted_step(self, self.engine)  # [R] device vectors, read by ReplicaOutputs at logging steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume each replica from its own ``replica_k/checkpoints/last.ckpt``: the set's file carries the
        loops and step, and under several processes holds process 0's share only. A replica that diverged
        keeps its last good weights and stays frozen."""
        run = os.path.dirname(os.path.dirname(os.path.abspath(self.trainer.ckpt_path)))
        states, frozen, self.best_on_resume = [], {}, {}
        for k, g in enumerate(self.replica_ids):
            folder = os.path.join(run, f"replica_{g}")
            path = os.path.join(runs.checkpoint_dir(folder), runs.LAST_CHECKPOINT)
            record = runs.read_status(folder) or {}
            if record.get("status") == "diverged":
                frozen[k] = int(record.get("step", record.get("global_step", 0)))
            if not os.path.isfile(path) and k in frozen:  # diverged before its first checkpoint: its first weights
                states.append(None)
                continue
            ckpt = None if k in frozen else self._pending_of_this_step(runs.checkpoint_dir(folder), checkpoint.get("global_step"))
            ckpt = ckpt or runs.load_checkpoint(path)
            if k not in frozen and ckpt.get("global_step") != checkpoint.get("global_step"):
                raise SBVAEError(f"{path} is at step {ckpt.get('global_step')} but the run's checkpoint at step "
                                 f"{checkpoint.get('global_step')}: resume from a run folder whose files were written together.")
            states.append(ckpt)
            if BEST_KEY in ckpt:
                self.best_on_resume[k] = (float(ckpt[BEST_KEY][0]), str(ckpt[BEST_KEY][1]))
        self._frozen_at = frozen
        checkpoint["state_dict"] = self._stacked_state(states)
        checkpoint["optimizer_states"] = [self._stacked_optimizer(states, i, s)
                                          for i, s in enumerate(checkpoint["optimizer_states"])]

    @staticmethod
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

    def _stacked_state(self, states: list[dict | None]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names + self.buffer_names:
            key = ("stacked." if name in self.names else "buffer__") + _flat(name)
            current = self.state_dict()[key]
            out[key] = torch.stack([current[k] if st is None else st["state_dict"][name].to(current.dtype)
                                    for k, st in enumerate(states)])
        return out

    def _stacked_optimizer(self, states: list[dict | None], index: int, fallback: dict) -> dict:
        frozen = getattr(self, "_frozen_at", {})
        saved = [st["optimizer_states"][index] for k, st in enumerate(states) if st is not None and k not in frozen]
        live = saved[0] if saved else next((st["optimizer_states"][index] for st in states if st is not None), None)
        if live is None:  # every replica here diverged before its first checkpoint: frozen, no moments to keep
            return {"param_groups": copy.deepcopy(fallback["param_groups"]), "state": {}}
        out = {"param_groups": copy.deepcopy(live["param_groups"]), "state": {}}
        for p, per_param in live["state"].items():
            out["state"][p] = {}
            for key, value in per_param.items():
                if torch.is_tensor(value) and value.ndim > 0:  # moments: one slice per replica
                    out["state"][p][key] = torch.stack([
                        torch.zeros_like(value) if st is None else st["optimizer_states"][index]["state"][p][key]
                        for st in states])
                else:  # Adam's step count, shared by the set
                    out["state"][p][key] = value
        return out

    def configure_optimizers(self):
        hp = self.model_hparams
        groups = {"vae": [], "disc": []}
        for n in self.names:
            groups["disc" if n.startswith("discriminator.") else "vae"].append(self.stacked[_flat(n)])
        opts = [adam(groups["vae"], self.device, lr=hp["lr"])]
        if groups["disc"]:
            opts.append(adam(groups["disc"], self.device, lr=hp["disc_lr"], betas=tuple(hp["disc_betas"])))
        return tuple(opts) if len(opts) > 1 else opts[0]

    # -- validation: every replica on the same fixed images ----------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        x, rows = batch
        noise = self._proto.evaluation_noise(rows).to(self.device)
        run = lambda w: functional_call(self._terms_of, w, (x, noise))
        nll, kl, _, logvar = torch.vmap(run)(self.weights())  # [R, B] ...: every replica on the same images and noise
        beta = self._proto.hparams.beta  # val/loss is the beta-VAE objective, as a single run logs it
        sums = torch.stack([(nll + kl).sum(1), nll.sum(1), kl.sum(1), (nll + beta * kl).sum(1)])
        std = torch.exp(0.5 * logvar.double()).sum(1)  # [R, latent_dim]: the sums behind val/latents_used
        self._val_sum = sums if getattr(self, "_val_sum", None) is None else self._val_sum + sums
        self._val_std = std if getattr(self, "_val_std", None) is None else self._val_std + std
        self._val_count = getattr(self, "_val_count", 0) + x.shape[0]

    def on_validation_epoch_end(self) -> None:
        if getattr(self, "_val_sum", None) is None:
            return
        self.val_terms = dict(zip(("elbo", "nll", "kl", "loss"), (self._val_sum / self._val_count).unbind()))
        self.val_terms["latents_used"] = torch.tensor([float(count_used(s)) for s in self._val_std / self._val_count])
        # The mean over replicas, for the progress bar (averaged over processes when they split the set).
        self.log("val/elbo", self.val_terms["elbo"].mean(), sync_dist=True)
        if not self.trainer.sanity_checking:  # two batches of the first weights choose no best checkpoint
            self.val_round = getattr(self, "val_round", 0) + 1  # tells ReplicaOutputs these values are new
        self._val_sum, self._val_std, self._val_count = None, None, 0


class ReplicaOutputs(L.Callback):
    """Per replica: TensorBoard scalars and pictures, checkpoints and status.json under ``replica_k/``."""

    def __init__(self, images: ImageLogger | None = None, keep_best: bool = True, heartbeat_seconds: float | None = None):
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
            runs.write_status(folder, status, trainer.global_step, self.started, seed=module.seeds[k],
                              **engine_status(module), **extra)
            self._states[k] = status

    def _beat(self) -> None:
        """Refresh the records of this process's running replicas (the heartbeat's call)."""
        for k in list(self._states):
            with self._lock:
                if self._states.get(k) == "running":
                    runs.write_status(self.folder(self._trainer, k), "running", self._trainer.global_step,
                                      self.started, seed=self._module.seeds[k], **engine_status(self._module))

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
                live = int(trainer.strategy.reduce(torch.tensor(live, device=trainer.strategy.root_device), reduce_op="sum"))
            if live == 0:
                raise_all_diverged(frozen)
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._pictures(trainer, module)

    def _mark_diverged(self, trainer, module, k: int, step: int) -> None:
        if (runs.read_status(self.folder(trainer, k)) or {}).get("status") == "diverged":
            return
        self._status(trainer, module, k, "diverged", step=step, message=(
            f"replica {self.replica_ids[k]} (seed {module.seeds[k]}) diverged at step {step}; it was frozen there and its last good "
            "checkpoint is kept."))

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
        print(f"sbvae-train: {where}{done} of {module.num_replicas} replicas completed, {len(frozen)} diverged"
              + (f" (replicas {sorted(self.replica_ids[k] for k in frozen)})" if frozen else "") + ".")
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
    """Replica k's part of the set's checkpoint, in a single run's format (weights, Adam state, loops, data seed)."""
    out = dict(checkpoint)
    out["state_dict"] = module.replica_state_dict(k)
    out["optimizer_states"] = [_slice_optimizer_state(s, k) for s in checkpoint["optimizer_states"]]
    out["hyper_parameters"] = dict(module.model_hparams)
    out["hparams_name"] = "kwargs"
    out["datamodule_hyper_parameters"] = {**dict(checkpoint["datamodule_hyper_parameters"]), "seed": module.seeds[k]}
    out["sbvae_model_class"] = f"{module.model_class.__module__}.{module.model_class.__qualname__}"
    out.pop("callbacks", None)  # the set's callback states do not describe one replica
    return out


def shares(replicas: int, processes: int) -> list[list[int]]:
    """Contiguous blocks of replica indices, one per process, sizes differing by at most one."""
    return [block.tolist() for block in torch.arange(replicas).tensor_split(processes)]


class ReplicaParallelStrategy(DDPStrategy):
    """DDP's processes and collectives without its gradient averaging: each process trains its own share
    of the replicas (``ReplicaSet.setup``) and sees every validation image."""

    def configure_ddp(self) -> None:
        pass  # no DistributedDataParallel wrapper: the shares differ, and no gradient is shared

    @property
    def distributed_sampler_kwargs(self) -> dict:
        return {"num_replicas": 1, "rank": 0}


STRATEGY = "replicas_ddp"
if STRATEGY not in StrategyRegistry:
    StrategyRegistry.register(STRATEGY, ReplicaParallelStrategy, description="sbvae: replicas split over processes")


def _slice_optimizer_state(state: dict, k: int) -> dict:
    """Replica k's part of an optimiser state over stacked parameters (the step counter is shared)."""
    out = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {}}
    for index, per_param in state["state"].items():
        out["state"][index] = {name: (v[k].clone() if torch.is_tensor(v) and v.ndim > 0 else v)
                               for name, v in per_param.items()}
    return out


def raise_all_diverged(frozen: dict[int, int]):
    step = min(frozen.values())
    raise DivergenceError(
        f"every replica diverged (first at step {step} here); each one's last good checkpoint is kept in "
        "replica_K/checkpoints/last.ckpt (resuming the set keeps them frozen): train on from one as a single run "
        "(--ckpt_path that file --seed_everything its seed) with a lower learning rate, or use other seeds, or "
        "model.likelihood=gaussian.", step=step, value=float("nan"))
