"""The package's imports run one way: command lines use the library, never the reverse; reports read sweeps."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))
# Folders installed as these packages (pyproject.toml's package-dir).
PACKAGES = {"sbvae": "sbvae", "sbvae.datasets": "datasets", "sbvae.metrics": "metrics"}


def modules():
    """(module name, file) of every module the package installs."""
    for package, folder in PACKAGES.items():
        for where, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(files):
                if name.endswith(".py"):
                    parts = os.path.relpath(os.path.join(where, name), os.path.join(ROOT, folder))[:-3].split(os.sep)
                    yield ".".join([package, *[p for p in parts if p != "__init__"]]), os.path.join(where, name)


def imported(module: str, path: str) -> set[str]:
    """Every module name ``path`` imports, at any depth of its code (relative imports resolved)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)  # `from sbvae import cli`
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


ALL = sorted(modules())


def test_the_walk_finds_the_package():
    found = dict(ALL)
    assert {"sbvae.runs", "sbvae.cli.train", "sbvae.replicas.stacked", "sbvae.metrics.mig", "sbvae.datasets"} <= set(
        found
    )


@pytest.mark.parametrize(
    ("importer", "imported_package", "why"),
    [
        (
            "sbvae",
            "sbvae.cli",
            "the library serves the command lines: move what it needs out of sbvae/cli (beside sbvae.runs)",
        ),
        (
            "sbvae.sweep",
            "sbvae.report",
            "reports read sweeps, not the reverse: what both need lives in the library (sbvae.paper)",
        ),
    ],
)
def test_no_import_runs_back_up(importer, imported_package, why):
    wrong = sorted(
        f"{module} imports {name}"
        for module, path in ALL
        if within(module, importer) and not within(module, imported_package)
        for name in imported(module, path)
        if within(name, imported_package)
    )
    assert not wrong, f"{why}: " + "; ".join(wrong)
