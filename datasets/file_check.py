"""The checks of the official data files (dSprites npz, 3D Shapes h5): one report and the grid test they share.

Both files store every combination of their factors' values once, the last factor varying fastest. A file
passes when its arrays have the official keys, shapes and dtypes and its labels form that grid (a
smaller grid, written for tests or previews, only with ``allow_subset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sbvae.datasets.base import DataError


@dataclass
class FileCheck:
    """What a file check found: report lines, problems (none for a good file) and the grid of labels."""

    official_sizes: tuple[int, ...]
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    values: list[np.ndarray] | None = None  # per factor, the sorted labels present in the file

    def fail(self, problem: str) -> FileCheck:
        self.problems.append(problem)
        self.lines.append(f"FAIL {problem}")
        return self

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def is_subset(self) -> bool:
        return self.values is not None and tuple(len(v) for v in self.values) != self.official_sizes

    def require_usable(self, path: Path, kind: str, fix: str) -> None:
        """Raise DataError naming the first problem and ``fix`` unless the file passed."""
        if self.problems:
            hint = " (pass allow_subset=True to use it anyway)" if self.is_subset else ""
            raise DataError(f"{path} is not a usable {kind} file: {self.problems[0]}{hint}; {fix}.")


def check_grid(
    report: FileCheck, labels: np.ndarray, what: str, names: tuple[str, ...], allow_subset: bool
) -> FileCheck:
    """Check that the rows of ``labels`` [N, K] are every combination of their values once, the last fastest.

    ``what`` names the array in the report (e.g. "latents_classes"); a grid smaller than the official
    one fails unless ``allow_subset``.
    """
    n = len(labels)
    if n == 0:
        return report.fail(f"its {what} hold no rows")
    values = [np.unique(labels[:, k]) for k in range(labels.shape[1])]
    sizes = tuple(len(v) for v in values)
    if n != int(np.prod(sizes)):
        return report.fail(f"its {n} {what} rows are not every combination of their values once")
    flat = np.zeros(n, dtype=np.int64)
    for k, v in enumerate(values):
        flat = flat * sizes[k] + np.searchsorted(v, labels[:, k])
    if not np.array_equal(flat, np.arange(n)):
        return report.fail(f"its {what} are not stored with the last factor varying fastest ({names[-1]})")
    report.values = values
    if sizes == report.official_sizes:
        report.lines.append(f"  grid: the full official grid, {n} images, {names[-1]} fastest")
        return report
    grid = " x ".join(f"{name} {s}" for name, s in zip(names, sizes))
    official = " x ".join(map(str, report.official_sizes))
    report.lines.append(
        f"  grid: a sub-grid ({grid} = {n} images; the official file has {int(np.prod(report.official_sizes))})"
    )
    if not allow_subset:
        report.fail(f"it holds a sub-grid of {n} images ({grid}), not the official {official}")
    return report
