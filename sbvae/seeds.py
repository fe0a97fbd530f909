"""The seeds a run trains with, kept in each of its checkpoints so that a resume draws the streams it drew.

A run has two: ``seed_everything``, under which its first weights were built, and the data seed that keys
its training images, colours and posterior noise (``data.seed``, by default ``seed_everything``).  Replica k
of a ``--replicas`` run is the single run of seed base + k, so its checkpoints record base + k for both.
"""

from __future__ import annotations

import os

import lightning as L

SEEDS_KEY = "sbvae_seeds"


def seeds_record(seed_everything: int | None, data: int | None) -> dict[str, int | None]:
    return {"seed_everything": seed_everything, "data": data}


def recorded_seeds(checkpoint: dict) -> dict[str, int | None]:
    """The seeds a checkpoint was trained with; one written before they were recorded gives only its data
    seed (from the data's hyperparameters), and None for ``seed_everything``."""
    record = checkpoint.get(SEEDS_KEY)
    if isinstance(record, dict):
        return seeds_record(record.get("seed_everything"), record.get("data"))
    return seeds_record(None, (checkpoint.get("datamodule_hyper_parameters") or {}).get("seed"))


def global_seed() -> int | None:
    """This process's ``seed_everything`` (None when the run was not seeded)."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return None if value is None else int(value)


class RecordSeeds(L.Callback):
    """Writes the run's seeds into each of its checkpoints (a replica set's module then writes its own)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        datamodule = trainer.datamodule
        checkpoint[SEEDS_KEY] = seeds_record(
            global_seed(), None if datamodule is None else datamodule.hparams.get("seed")
        )
