"""Replica-parallel training: R seeds of one configuration trained in one process, as one program.

Replica k is the run ``--seed_everything base + k`` would have been: its initial weights are built under
that seed, and its data, colours and posterior noise come from the keyed streams of that seed.
``sbvae.engine`` runs the step; a replica whose loss diverges is frozen alone.

    stacked    ReplicaSet: the replicas' parameters stacked, one program for all of them
    outputs    ReplicaOutputs: each replica's scalars, pictures, checkpoints and status under replica_k/
    strategy   ReplicaParallelStrategy: the replicas split over several processes
"""

from sbvae.replicas.outputs import BEST_KEY, PENDING_CHECKPOINT, ReplicaOutputs, raise_all_diverged, replica_checkpoint
from sbvae.replicas.stacked import ReplicaSet
from sbvae.replicas.strategy import STRATEGY, ReplicaParallelStrategy, shares

__all__ = [
    "BEST_KEY",
    "PENDING_CHECKPOINT",
    "STRATEGY",
    "ReplicaOutputs",
    "ReplicaParallelStrategy",
    "ReplicaSet",
    "raise_all_diverged",
    "replica_checkpoint",
    "shares",
]
