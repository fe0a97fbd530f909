"""What the subprocess tests load by class path: weight digests per DDP process, a hard kill, a one-process loss spike."""

import hashlib
import os
import signal

import lightning as L
import torch

from sbvae.module import VAE


class ReplicaDigest(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_fit_end(self, trainer, module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        with open(os.path.join(self.out_dir, f"digest_rank{trainer.global_rank}.txt"), "w") as f:
            f.write(f"{digest.hexdigest()} {trainer.global_step} {trainer.world_size}\n")


class KillAt(L.Callback):
    """Kills its own process with SIGKILL once ``step`` steps are done: a crash no handler sees."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class LossSpikeOnRank(VAE):
    """A VAE whose loss on process ``rank`` at step ``step`` is multiplied by ``factor``: finite, but above max_loss.

    Only that process sees its own loss go bad, so the others stop with it only if the flag is shared.
    """

    def __init__(self, *args, rank: int = 1, step: int = 2, factor: float = 1e8, **kwargs):
        super().__init__(*args, **kwargs)
        self.spike_rank, self.spike_step, self.factor = rank, step, factor

    def loss_terms(self, x, noise):
        terms = super().loss_terms(x, noise)
        if self.trainer.global_rank == self.spike_rank:
            terms["loss"] = terms["loss"] * torch.where(self.engine.step_counter == self.spike_step, self.factor, 1.0)
        return terms
