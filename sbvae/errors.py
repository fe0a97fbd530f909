"""Errors a user can cause or must act on; the CLIs print them as one sentence and exit non-zero."""


class SBVAEError(Exception):
    """A problem with the user's input or files, with the fix in the message."""


class DivergenceError(SBVAEError):
    """Training produced a non-finite or exploding loss; the run is marked diverged."""

    def __init__(self, message: str, step: int, value: float):
        super().__init__(message)
        self.step, self.value = step, value


class Preempted(SBVAEError):
    """A signal (SIGTERM, SIGUSR1: preemption, a scheduler's warning) stopped training after last.ckpt was saved."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step
