"""sbvae-train: LightningCLI over the sbvae LightningModules and the ground-truth DataModule.

sbvae-train fit --config configs/quickstart.yaml [--model.init_args.beta 4] [--trainer.max_steps 100]
sbvae-train fit --config configs/quickstart.yaml --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt
sbvae-train fit --config configs/quickstart.yaml --replicas 15      # seeds 0..14 in one process
"""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from sbvae import runs
from sbvae.callbacks import ImageLogger, LastCheckpoint, RunStatus
from sbvae.data import GroundTruthDataModule
from sbvae.errors import DivergenceError, Preempted, SBVAEError
from sbvae.seeds import RecordSeeds, recorded_seeds

# The factor stream is an endless IterableDataset cut into epochs by __len__, with no workers:
# Lightning's caution about __len__ with several workers does not apply.
warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
# A resumed run continues in its own checkpoints folder on purpose (one run, one folder).
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


# Lines of jsonargparse's nested Union report that say nothing about what the user typed.
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
)


class ConciseArgumentParser(LightningArgumentParser):
    """Reports a bad key or value in one line instead of the whole usage text, and takes no abbreviated key
    (argparse's default would read a typo such as --trainer.max_step as whichever key it starts)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parts = [line.strip(" -") for line in str(message).splitlines()]
        detail = " ".join(p for p in parts if p and not p.startswith(_NOISE))
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"sbvae-train: error: {detail}\n(every accepted key: {prog} --help, or add --print_config)\n")
        sys.exit(2)


class SBVAECLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # No predict: a VAE of sbvae has no prediction to make (sbvae-eval scores, sbvae-report draws).
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def parse_arguments(self, parser, args) -> None:
        self.command_line = sys.argv[1:] if args is None else args  # what the user typed, beside the config files
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        # The model's image geometry always follows the data; users set it once, on the data.
        parser.link_arguments("data.image_size", "model.init_args.image_size")
        parser.link_arguments("data.channels", "model.init_args.channels", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/elbo",
                "checkpoint.mode": "min",
                "checkpoint.save_last": False,  # LastCheckpoint keeps last.ckpt current
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{step}",
                # val/elbo exists only after a validation; Lightning would otherwise also try at the end of
                # a resumed epoch, before any validation, and warn that the key is missing
                "checkpoint.save_on_train_epoch_end": False,
            }
        )
        parser.add_lightning_class_args(ImageLogger, "images")
        parser.add_argument(
            "--replicas",
            type=int,
            default=1,
            help="train this many seeds (seed_everything, +1, ...) of the config in one process",
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")

    def _settings(self):
        """The parsed settings of the subcommand (or of the whole config when run=False: the benchmark)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def before_instantiate_classes(self) -> None:
        settings = self._settings()
        max_steps = settings.get("trainer", {}).get("max_steps")
        if self.config.get("subcommand") == "fit" and max_steps is not None and (max_steps == 0 or max_steps < -1):
            raise SBVAEError(
                f"--trainer.max_steps {max_steps} trains nothing: give the number of optimiser steps, such as 1000."
            )
        accelerator = str(settings.get("trainer", {}).get("accelerator"))
        if accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SBVAEError(
                    f"--trainer.accelerator {accelerator}: torch sees no CUDA GPU on this machine "
                    f"(torch {torch.__version__}); use --trainer.accelerator cpu, or auto to take a GPU when there is one."
                )
        if settings.get("replicas", 1) < 1:
            raise SBVAEError(f"--replicas must be at least 1, got {settings.get('replicas')}.")
        if settings.get("replicas", 1) == 1:
            return
        trainer = settings.trainer
        if processes_requested(trainer) <= 1:
            return
        from sbvae.replicas import STRATEGY

        if trainer.strategy not in ("auto", "ddp", STRATEGY):
            raise SBVAEError(
                f"--replicas over several devices trains each process's share with its own strategy; "
                f"drop --trainer.strategy {trainer.strategy}."
            )
        trainer.strategy = STRATEGY  # processes as DDP's, without gradient averaging between replicas

    def _check_log_folder(self) -> None:
        """An unusable save_dir (a file in its path, say) stops the run here, in one sentence."""
        root = getattr(self.trainer.logger, "root_dir", None)
        if root:
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as error:
                raise runs.write_failure(root, error, "the run's folder") from error

    def _check_scored_checkpoint(self) -> None:
        if not self._settings().get("ckpt_path"):
            subcommand = self.config.get("subcommand")
            raise SBVAEError(
                f"sbvae-train {subcommand} without --ckpt_path would score the config's untrained weights: pass "
                "--ckpt_path with a run's checkpoints/last.ckpt (or its best-step=N.ckpt)."
            )
        self._check_log_folder()

    before_validate = before_test = _check_scored_checkpoint

    def before_fit(self) -> None:
        self._check_log_folder()
        best = self.trainer.checkpoint_callback
        if best is not None and best.save_last:
            raise SBVAEError(
                "checkpoint.save_last would write a second last.ckpt beside the one LastCheckpoint keeps "
                "(atomically, at validation, on time and on signals): drop checkpoint.save_last."
            )
        if best is not None and best.save_top_k != 0 and self.trainer.limit_val_batches == 0:
            rank_zero_warn(
                f"--trainer.limit_val_batches 0 runs no validation, so no best checkpoint by {best.monitor} is "
                "kept (last.ckpt is): set limit_val_batches above 0 to keep one, or checkpoint.save_top_k 0."
            )
        replicas = self._settings().get("replicas", 1)
        if replicas == 1:
            return self._check_weights_fit()
        from sbvae.callbacks import MetricsCallback
        from sbvae.replicas import ReplicaOutputs, ReplicaSet

        if any(isinstance(c, MetricsCallback) for c in self.trainer.callbacks):
            raise SBVAEError(
                "MetricsCallback scores one model while it trains; with --replicas drop it and score every "
                "replica afterwards with sbvae-eval --ckpt <the run folder>."
            )
        if (
            best is not None
            and best.save_top_k != 0
            and ((best.monitor, best.mode) != ("val/elbo", "min") or best.save_top_k != 1)
        ):
            raise SBVAEError(
                f"with --replicas each replica keeps its one best checkpoint by val/elbo (lowest), not "
                f"{best.save_top_k} by {best.monitor} ({best.mode}): set the checkpoint's monitor to val/elbo, "
                "mode to min and save_top_k to 1, or save_top_k to 0."
            )
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.model = ReplicaSet(self.model, [base + k for k in range(replicas)])
        images = next(c for c in self.trainer.callbacks if isinstance(c, ImageLogger))
        self.trainer.callbacks.remove(images)  # each replica draws its own pictures
        keep_best = best is not None and best.save_top_k != 0
        if best is not None:
            best.save_top_k = 0  # the best of the set's mean means nothing: each replica keeps its own best
        self.trainer.callbacks.append(ReplicaOutputs(images, keep_best=keep_best))
        if processes_requested(self._settings().trainer) <= 1:
            # under several processes the set's checkpoint holds process 0's share only, which each process
            # swaps for its own later; check_replicas_match has already compared the counts
            self._check_weights_fit()

    def _check_weights_fit(self) -> None:
        """A resume whose config builds another architecture fails here, in one sentence, before the run
        folder it continues is touched (its status, config and events)."""
        path, checkpoint = getattr(self, "_resume", (None, None))
        if checkpoint is None or "state_dict" not in checkpoint:
            return
        try:
            self.model.load_state_dict(checkpoint["state_dict"], strict=True)  # Lightning loads them again
        except RuntimeError as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
            run = runs.run_dir_of(path)
            own = f"sbvae-train fit --config {os.path.join(run, 'config.yaml')} --ckpt_path {path}" if run else None
            raise SBVAEError(
                f"--ckpt_path {path} holds weights of another model than this config builds ({detail[:200]}): "
                f"resume with the settings it was trained with{f' ({own})' if own else ''}, or leave out "
                "--ckpt_path to start a new run."
            ) from None

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the model's arguments by the checkpoint's when resuming, silently
        # dropping the user's overrides (a lower lr after a divergence, say).  Here the config and
        # the command line define the model; the checkpoint supplies weights and training state.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        settings = self.config[subcommand]
        if "weights_only" in settings:
            settings["weights_only"] = True  # Lightning's own load of the checkpoint: never code from a file
        path = settings.get("ckpt_path")
        if path and os.path.isdir(path):  # a run folder: its own last.ckpt (all replicas of a replica run)
            path = settings["ckpt_path"] = os.path.join(path, "checkpoints", "last.ckpt")
        if not path or path in ("last", "best", "hpc", "registry"):
            return
        if not os.path.isfile(path):
            raise SBVAEError(
                f"--ckpt_path {path} does not exist: pass a checkpoint written by sbvae-train, "
                "e.g. runs/NAME/version_K/checkpoints/last.ckpt."
            )
        checkpoint = runs.load_checkpoint(path)  # refuses a file that would run code, before anything else
        if subcommand == "fit":
            step, max_steps = checkpoint.get("global_step", 0), settings.trainer.max_steps
            if max_steps is not None and 0 < max_steps < step:
                raise SBVAEError(
                    f"--ckpt_path {path} is at step {step}, past --trainer.max_steps {max_steps}: nothing would "
                    f"train. Set max_steps above {step} to continue the run."
                )
            check_replicas_match(path, settings.get("replicas", 1))  # before the run folder is touched
            keep_checkpoint_seeds(settings, path, checkpoint, self.command_line)
            continue_in_run_folder(settings.trainer, path, step, checkpoint)
            self._resume = (path, checkpoint)


def check_replicas_match(ckpt_path: str, replicas: int) -> None:
    """A resume trains what the checkpoint's run trained: a replica run's set with --replicas R, a single
    run (or one replica's own checkpoint) without."""
    run = runs.run_dir_of(ckpt_path)
    held = len(runs.replica_dirs(run)) if run is not None else 0
    if held and replicas != held:
        raise SBVAEError(
            f"{run} is a replica-parallel run of {held} replicas: resume it with --replicas {held} (or "
            f"one replica as a single run: --ckpt_path {os.path.join(run, 'replica_K', runs.CHECKPOINTS, runs.LAST_CHECKPOINT)})."
        )
    if not held and replicas > 1:
        raise SBVAEError(f"{ckpt_path} is a single run's checkpoint: resume it without --replicas.")


def keep_checkpoint_seeds(settings, ckpt_path: str, checkpoint: dict, command_line) -> None:
    """A resume draws the streams its checkpoint drew: the checkpoint's seeds replace the config's (a replica
    continued alone keeps seed base + k), and a seed typed on the command line that contradicts them is refused."""
    recorded = recorded_seeds(checkpoint)
    for flag, key, value in (
        ("--seed_everything", "seed_everything", recorded["seed_everything"]),
        ("--data.seed", "data.seed", recorded["data"]),
    ):
        if value is None:  # a checkpoint from before seeds were recorded, or an unseeded run
            continue
        if typed(command_line, flag) and settings[key] != value:
            raise SBVAEError(
                f"--ckpt_path {ckpt_path} continues a run trained with {flag} {value}: drop {flag} "
                f"{settings[key]} to keep its streams, or leave out --ckpt_path to start a new run."
            )
        settings[key] = value


def typed(command_line, flag: str) -> bool:
    """Whether ``flag`` was given on the command line (or, for a programmatic call, in its dict of settings)."""
    if isinstance(command_line, (list, tuple)):
        return any(str(a) == flag or str(a).startswith(flag + "=") for a in command_line)
    if isinstance(command_line, dict):
        settings = command_line.get("fit", command_line)
        for part in flag.removeprefix("--").split("."):
            if not isinstance(settings, dict) or part not in settings:
                return False
            settings = settings[part]
        return True
    return False


def processes_requested(trainer_config) -> int:
    """How many processes ``--trainer.devices`` (and ``num_nodes``) asks for, as Lightning would resolve it."""
    import torch

    devices, accelerator = trainer_config.devices, str(trainer_config.accelerator)
    gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        count = max(gpus, 1)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        count = int(devices)
    return count * int(trainer_config.num_nodes or 1)


def continue_in_run_folder(trainer_config, ckpt_path: str, step: int, checkpoint: dict | None = None) -> None:
    """Point the TensorBoard logger at the run folder of ``ckpt_path``, so a resumed run stays one run.

    Its events then land beside the earlier ones, and TensorBoard drops the earlier events after ``step``
    (logged after the checkpoint, by a process that died). Those at ``step`` stay: the pictures and
    sbvae-eval scores of the checkpoint itself (the training scalars of step s sit at index s - 1, so the
    only earlier event that can sit there, step s + 1's, is the one the resumed run logs again, the same
    numbers). A checkpoint outside a run folder starts a new one, as does a run logged with another logger.
    """
    run = runs.run_dir_of(ckpt_path)
    logger = trainer_config.get("logger")
    if (
        run is None
        or not logger
        or isinstance(logger, (bool, list))
        or not str(logger.get("class_path", "")).endswith("TensorBoardLogger")
    ):
        return
    run = recorded_run_dir(checkpoint or {}, run)
    parent = os.path.dirname(run)
    logger.init_args.save_dir, logger.init_args.name = os.path.dirname(parent), os.path.basename(parent)
    logger.init_args.version = os.path.basename(run)
    logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "purge_step": int(step) + 1}


def recorded_run_dir(checkpoint: dict, run: str) -> str:
    """``run`` spelled as the checkpoint's ModelCheckpoint recorded its folder (relative, say): Lightning
    reloads the best checkpoints it tracks only when the folder string is the same, and would otherwise keep
    a worse "best" beside the earlier one."""
    for state in (checkpoint.get("callbacks") or {}).values():
        dirpath = state.get("dirpath") if isinstance(state, dict) else None
        if isinstance(dirpath, str) and os.path.realpath(dirpath) == os.path.realpath(
            os.path.join(run, runs.CHECKPOINTS)
        ):
            return os.path.dirname(dirpath)
    return run


def build_cli(args=None, run: bool = True) -> SBVAECLI:
    return SBVAECLI(
        L.LightningModule,
        GroundTruthDataModule,
        subclass_mode_model=True,
        parser_class=ConciseArgumentParser,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        trainer_defaults={
            "callbacks": [RunStatus(), RecordSeeds()],
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
        },
        save_config_kwargs={"overwrite": True},
    )


def user_error(error: BaseException) -> SBVAEError | None:
    """The SBVAEError behind ``error``: jsonargparse re-raises constructor errors wrapped in its own."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SBVAEError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(args=None) -> None:
    try:
        build_cli(args)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        print(f"sbvae-train: {cause}", file=sys.stderr)
        if isinstance(cause, Preempted):  # what a shell reports for a process the signal killed
            sys.exit(128 + cause.signum)
        sys.exit(3 if isinstance(cause, DivergenceError) else 2)


if __name__ == "__main__":
    main()
