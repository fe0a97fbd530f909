"""The engine under a Lightning Trainer: which step mode a run gets, its optimisers settled after a resume,
the step counted as Lightning's, and what status.json says of it."""

from __future__ import annotations

from collections.abc import Callable

import lightning
import torch
from lightning.pytorch.utilities import rank_zero_info

from sbvae.engine import Engine, draw_ahead_for
from sbvae.errors import SBVAEError


def engine_status(module) -> dict:
    """What status.json says of a module's training step: its mode and, after a fallback, why."""
    engine = getattr(module, "engine", None)
    if engine is None:
        return {}
    return {"step_mode": engine.mode, **({"graph_fallback": engine.fallback} if engine.fallback else {})}


def settle_optimizer_settings(optimizers: list[torch.optim.Optimizer], configured) -> None:
    """Give restored optimisers the settings of this run's config and device.

    Lightning restores a checkpoint through ``Optimizer.load_state_dict``, which brings back every param
    group's saved settings: the saved run's lr and betas (so ``--model.init_args.lr`` on a resume would be
    ignored) and the ``capturable`` / ``fused`` flags of the device it trained on (a GPU's capturable Adam
    fails on a CPU; a CPU's fused Adam cannot be captured in a CUDA graph).  ``configured`` is what
    ``configure_optimizers()`` makes now; Adam's step counts move where the new flags keep them.
    """
    configured = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    for opt, fresh in zip(optimizers, configured):
        for group, wanted in zip(opt.param_groups, fresh.param_groups):
            group.update({key: value for key, value in wanted.items() if key != "params"})
            on_device = bool(group.get("capturable") or group.get("fused"))
            for p in group["params"]:
                step = opt.state.get(p, {}).get("step")
                if torch.is_tensor(step):
                    opt.state[p]["step"] = step.to(p.device if on_device else "cpu", torch.float32)


def _lightning_optimizers(module) -> list:
    optimizers = module.optimizers()
    return optimizers if isinstance(optimizers, list) else [optimizers]


def engine_for(
    module, step_mode: str, draw_batch: Callable[[torch.Tensor], torch.Tensor], seed, rank: int, **options
) -> Engine:
    """The engine of a LightningModule under its Trainer: the mode from ``step_mode`` ("auto": a CUDA
    graph on a CUDA device unless DDP averages gradients, else eager), its optimisers, bf16 autocast under
    ``bf16-mixed``, and the streams continuing from the restored global step."""
    trainer = module.trainer
    # A DDP step all-reduces gradients; replica sets spread over processes share nothing, so each may graph.
    averaged = trainer.world_size > 1 and not options.get("replicas")
    fallback = step_mode == "auto"  # auto never trains worse than eager: a failed capture falls back to it
    step_mode = resolved_step_mode(step_mode, module.device, averaged, getattr(trainer.datamodule, "data", None))
    bf16 = str(trainer.precision).startswith("bf16")
    optimizers = [o.optimizer for o in _lightning_optimizers(module)]
    settle_optimizer_settings(optimizers, module.configure_optimizers())
    return Engine(
        module,
        optimizers,
        draw_batch,
        seed=seed,
        rank=rank,
        mode=step_mode,
        start_step=module.global_step,
        device=module.device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        draw_ahead=draw_ahead_for(module.device, step_mode, seed),
        fallback=fallback,
        **options,
    )


def resolved_step_mode(step_mode: str, device: torch.device, averaged: bool, data) -> str:
    """ "graph" or "eager" for a ``step_mode`` setting: "auto" graphs on a CUDA device unless DDP averages
    gradients (``averaged``) or the dataset's render is not device-pure (it reads on the host each step)."""
    graph_ok = torch.device(device).type == "cuda" and not averaged
    pure = getattr(data, "device_pure_render", True)
    name = getattr(data, "name", "") or type(data).__name__
    fix = "set data.dataset_options {in_memory: true} to keep its images on the device"
    if step_mode == "auto":
        if graph_ok and not pure:
            rank_zero_info(
                f"step_mode auto: eager steps, since {name} reads its images on the host each step, which a "
                f"CUDA graph cannot capture ({fix} and graph)."
            )
        return "graph" if graph_ok and pure else "eager"
    if step_mode == "graph" and not graph_ok:
        raise SBVAEError(
            "step_mode graph needs a CUDA device and no DDP gradient averaging; use step_mode auto or eager."
        )
    if step_mode == "graph" and not pure:
        raise SBVAEError(
            f"step_mode graph cannot capture {name}, which reads its images on the host each step; "
            f"{fix}, or use step_mode auto or eager."
        )
    return step_mode


def counted_step(module, engine: Engine) -> dict[str, torch.Tensor]:
    """One engine step, counted by Lightning as one optimiser step (``trainer.global_step``).

    The engine does the whole step, its update included, and leaves no gradient behind. Lightning counts a
    manual optimisation step in the hooks its optimizer wrapper calls around ``strategy.optimizer_step``;
    calling those hooks around the engine's step counts it without the rest, which would only run the
    step as a closure and then an Adam step over no gradients (half a millisecond of host time per step on
    a CPU, where each Adam step probes for a CUDA driver). A Lightning whose hooks no longer count stops
    the run here rather than training past max_steps.
    """
    optimizer = _lightning_optimizers(module)[0]
    before = module.trainer.global_step
    optimizer._on_before_step()
    terms = engine.step()
    optimizer._on_after_step()
    if module.trainer.global_step != before + 1:
        raise SBVAEError(
            f"this Lightning ({lightning.__version__}) did not count the step through its optimizer's step hooks; "
            "install a lightning version within the range pyproject.toml names."
        )
    return terms
