"""Dataset names -> constructors: ``load(name, **options)`` and ``available()``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sbvae.datasets.base import DataError, GroundTruthData
from sbvae.datasets.common import data_dir as resolve_data_dir


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., GroundTruthData]
    description: str
    files: Callable[[Path], list[tuple[str, Path]]]  # (what, where) for `sbvae-data list`

    def options(self) -> list[str]:
        target = self.factory.func if isinstance(self.factory, functools.partial) else self.factory
        params = inspect.signature(target).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _entries() -> dict[str, Entry]:
    from sbvae.datasets.chairs import CHAIRS_FOLDER, Chairs
    from sbvae.datasets.circles import VARIANTS, Circles
    from sbvae.datasets.shapes3d import SHAPES3D_FILE, Shapes3D
    from sbvae.datasets.sprites import DSPRITES_FILE, ColoredSprites, DSprites

    def dsprites_files(d):
        return [("official npz (optional: procedural otherwise)", d / DSPRITES_FILE)]

    entries = [
        Entry("dsprites", DSprites, DSprites.description, dsprites_files),
        Entry("colored-sprites", ColoredSprites, ColoredSprites.description, dsprites_files),
    ]
    for name, variant in VARIANTS.items():
        entries.append(Entry(name, functools.partial(Circles, name), f"circles: {variant.description}", lambda d: []))
    entries.append(
        Entry("shapes3d", Shapes3D, Shapes3D.description, lambda d: [("h5 file (required)", d / SHAPES3D_FILE)])
    )
    entries.append(
        Entry("chairs", Chairs, Chairs.description, lambda d: [("image folder (required)", d / CHAIRS_FOLDER)])
    )
    return {e.name: e for e in entries}


@functools.cache
def registry() -> dict[str, Entry]:
    return _entries()


def available() -> dict[str, str]:
    """Dataset names and a one-line description of each."""
    return {name: entry.description for name, entry in registry().items()}


def load(name: str, **options) -> GroundTruthData:
    """Build the dataset ``name`` with keyword ``options`` (``sbvae-data list`` shows names and factors).

    Every dataset takes ``image_size`` (default 64); see each class's docstring
    for the rest.  Unknown names and options raise ``DataError`` (a ValueError)
    with one sentence.
    """
    entries = registry()
    if name not in entries:
        raise DataError(f"unknown dataset {name!r}; the datasets are: {', '.join(entries)}.")
    entry = entries[name]
    valid = entry.options()
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise DataError(
            f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(valid)}."
        )
    data = entry.factory(**options)
    data.name = name
    return data


def data_files(name: str, data_dir: str | None = None) -> list[tuple[str, Path, bool]]:
    """(what, path, present) for the files dataset ``name`` can use in the data directory."""
    directory = resolve_data_dir(data_dir)
    return [(what, path, path.exists()) for what, path in registry()[name].files(directory)]
