"""Replicas over several processes: DDP's processes and collectives, each process training its own share."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


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
