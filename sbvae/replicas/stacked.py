"""The stacked module: R replicas' parameters stacked along a first axis, trained as one program.

One ``vmap`` of the plain model's ``loss_terms`` (on accelerators) or a loop over plain models whose weights
are views of the stacked ones (on the CPU) runs every replica; Adam over the stacked parameters is
elementwise, hence exactly per-replica Adam.
"""

from __future__ import annotations

import copy
import os

import lightning as L
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from sbvae.engine import Engine
from sbvae.errors import SBVAEError
from sbvae.metrics.latents_used import count_used
from sbvae.module import VAE, adam, refuse_fp16, wants_channels_last
from sbvae.replicas.outputs import read_replica_checkpoints
from sbvae.replicas.strategy import shares
from sbvae.seeds import SEEDS_KEY, seeds_record
from sbvae.trainer_step import counted_step, engine_for


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
                raise SBVAEError(
                    f"--replicas {len(self.all_seeds)} over {world} processes leaves process {rank} "
                    f"nothing to train: ask for at least {world} replicas, or fewer devices."
                )
            self._build(share)

    @property
    def num_replicas(self) -> int:
        return len(self.seeds)

    @property
    def uses_step(self) -> bool:
        """Whether the plain model takes the training step as an input (the engine then passes it)."""
        return getattr(self._proto, "uses_step", False)

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
        outs = [
            self._run(
                {n: layout(w[k]) for n, w in self.weights().items()}, layout(xs[k]), {n: v[k] for n, v in rs.items()}
            )
            for k in range(self.num_replicas)
        ]
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
        return [
            lambda k=k: models[k].loss_terms(layout(xs[k]), **{n: v[k] for n, v in rs.items()})
            for k in range(self.num_replicas)
        ]

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
            self,
            self.model_hparams.get("step_mode", "auto"),
            lambda step: dm.training_batch(seeds, 0, step, self.device),
            seed=seeds,
            rank=0,
            max_loss=self.model_hparams["max_loss"],
            replicas=self.num_replicas,
        )
        for k, step in getattr(self, "_frozen_at", {}).items():  # diverged before the resumed checkpoint
            self.engine.bad_step[k] = step

    def training_step(self, batch, batch_idx: int) -> None:
        self.last_terms = counted_step(self, self.engine)  # [R] device vectors, read by ReplicaOutputs at logging steps

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The set's seed is its base: replica k draws the streams of seed base + k (ReplicaOutputs records those).
        checkpoint[SEEDS_KEY] = seeds_record(self.all_seeds[0], self.all_seeds[0])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume each replica from its own files (``read_replica_checkpoints``): the set's file carries only the
        loops and step. A replica that diverged keeps its last good weights and stays frozen."""
        run = os.path.dirname(os.path.dirname(os.path.abspath(self.trainer.ckpt_path)))
        states, self._frozen_at, self.best_on_resume = read_replica_checkpoints(
            run, self.replica_ids, checkpoint.get("global_step")
        )
        checkpoint["state_dict"] = self._stacked_state(states)
        checkpoint["optimizer_states"] = [
            self._stacked_optimizer(states, i, s) for i, s in enumerate(checkpoint["optimizer_states"])
        ]

    def _stacked_state(self, states: list[dict | None]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names + self.buffer_names:
            key = ("stacked." if name in self.names else "buffer__") + _flat(name)
            current = self.state_dict()[key]
            out[key] = torch.stack(
                [current[k] if st is None else st["state_dict"][name].to(current.dtype) for k, st in enumerate(states)]
            )
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
                    out["state"][p][key] = torch.stack(
                        [
                            torch.zeros_like(value) if st is None else st["optimizer_states"][index]["state"][p][key]
                            for st in states
                        ]
                    )
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
