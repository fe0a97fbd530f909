"""The paper's figures with matplotlib (Agg): MIG histograms (Figures 2, 3), rate-distortion (Figure 4),
latent geometry (Figures 7, 8, 13-22) and labelled traversals.  Each function returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sbvae.report.probes import Geometry, Traversal  # noqa: E402

BEST, WORST = "tab:green", "tab:red"


def traversal_axes(ax, t: Traversal, title: str) -> None:
    """A traversal image with one label per row (latent, mean posterior std, KL) and the column values."""
    ax.imshow(t.grid, interpolation="nearest")
    pitch = t.cell + 2  # make_grid's 2-pixel padding
    ax.set_yticks([2 + i * pitch + t.cell / 2 for i in range(len(t.labels))])
    ax.set_yticklabels(t.labels, fontsize=7)
    ends = sorted({0, len(t.values) // 2, len(t.values) - 1})  # -limit, 0, +limit: enough to read the sweep
    ax.set_xticks([2 + j * pitch + t.cell / 2 for j in ends])
    ax.set_xticklabels([f"{t.values[j]:+.1f}" for j in ends], fontsize=7)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)


def traversal_figure(t: Traversal, title: str) -> Figure:
    rows, cols = len(t.labels), len(t.values)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * cols + 1.6, 0.6 + 0.45 * rows))
    traversal_axes(ax, t, title)
    fig.tight_layout()
    return fig


def mig_histograms(
    series: list[tuple[str, list[tuple[int, float]]]],
    traversals: dict[str, tuple[Traversal | None, Traversal | None]] | None = None,
) -> Figure:
    """One histogram of MIG over seeds per row, best and worst seed starred; their traversals beside it."""
    traversals = traversals or {}
    with_pictures = any(any(t) for t in traversals.values())
    ncols = 3 if with_pictures else 1
    fig, axes = plt.subplots(len(series), ncols, figsize=(4.2 * ncols, 2.6 * len(series)), squeeze=False)
    top = max((v for _, values in series for _, v in values), default=0.1)
    bins = np.linspace(0.0, max(top * 1.1, 0.05), 16)
    for i, (name, values) in enumerate(series):
        ax = axes[i][0]
        migs = np.array([v for _, v in values])
        ax.hist(migs, bins=bins, color="tab:blue", alpha=0.75, edgecolor="white")
        ax.set_title(
            f"{name}: MIG over {len(migs)} seed{'s' if len(migs) != 1 else ''} (median {np.median(migs):.3f})",
            fontsize=9,
        )
        ax.set_xlabel("MIG")
        ax.set_ylabel("seeds")
        if len(values):
            (best_seed, best), (worst_seed, worst) = max(values, key=lambda x: x[1]), min(values, key=lambda x: x[1])
            height = ax.get_ylim()[1]
            ax.plot([best], [height * 0.92], marker="*", markersize=14, color=BEST, label=f"best: seed {best_seed}")
            ax.plot([worst], [height * 0.92], marker="*", markersize=14, color=WORST, label=f"worst: seed {worst_seed}")
            ax.legend(fontsize=7, loc="upper center")
        if with_pictures:
            best_t, worst_t = traversals.get(name, (None, None))
            for ax2, t, what in ((axes[i][1], best_t, "best"), (axes[i][2], worst_t, "worst")):
                if t is None:
                    ax2.axis("off")
                else:
                    traversal_axes(ax2, t, f"{name}, {what} seed")
    fig.tight_layout()
    return fig


def rate_distortion(series: dict[str, list[dict[str, float]]], beta_key: str = "beta") -> Figure:
    """Figure 4: NLL vs KL and NLL vs MIG, one point per run, the mean per beta joined, beta = 1 in white."""
    has_mig = any("mig" in p for points in series.values() for p in points)
    fig, axes = plt.subplots(1, 2 if has_mig else 1, figsize=(11 if has_mig else 5.5, 4.3), squeeze=False)
    panels = [("kl", "KL (nats)", "(a) NLL vs KL")] + ([("mig", "MIG", "(b) NLL vs MIG")] if has_mig else [])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (x_key, x_label, title), ax in zip(panels, axes[0]):
        for k, (name, points) in enumerate(sorted(series.items())):
            color = colors[k % len(colors)]
            pts = [p for p in points if x_key in p and "nll" in p]
            ax.scatter([p[x_key] for p in pts], [p["nll"] for p in pts], s=12, alpha=0.35, color=color)
            betas = sorted({p[beta_key] for p in pts})
            means = [
                (
                    b,
                    np.mean([p[x_key] for p in pts if p[beta_key] == b]),
                    np.mean([p["nll"] for p in pts if p[beta_key] == b]),
                )
                for b in betas
            ]
            ax.plot([m[1] for m in means], [m[2] for m in means], "-o", color=color, label=name, markersize=5)
            ones = [m for m in means if abs(m[0] - 1.0) < 1e-9]
            ax.plot(
                [m[1] for m in ones],
                [m[2] for m in ones],
                "o",
                markersize=6,
                markerfacecolor="white",
                markeredgecolor=color,
            )
            for b, x, y in means:
                ax.annotate(f"{b:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(x_label)
        ax.set_ylabel("NLL (nats)")
        ax.set_title(title + " over beta (labels); white: beta = 1", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _grid_lines(ax, xy: np.ndarray, heldout: np.ndarray) -> None:
    """Lines joining grid neighbours along each factor, points coloured by the first factor, the hole in black."""
    A, B, _ = xy.shape
    for i in range(A):
        ax.plot(xy[i, :, 0], xy[i, :, 1], color="tab:blue", linewidth=0.7, alpha=0.7)
    for j in range(B):
        ax.plot(xy[:, j, 0], xy[:, j, 1], color="tab:orange", linewidth=0.7, alpha=0.7)
    inside = ~heldout
    colour = np.repeat(np.arange(A)[:, None], B, axis=1)
    ax.scatter(
        xy[..., 0][inside],
        xy[..., 1][inside],
        c=colour[inside],
        cmap="viridis",
        s=9,
        zorder=3,
        vmin=0,
        vmax=max(A - 1, 1),
    )
    if heldout.any():
        ax.scatter(xy[..., 0][heldout], xy[..., 1][heldout], color="black", s=11, zorder=4, label="held out")


def _geometry_panels(axes, entries: list[tuple[str, Geometry]]) -> None:
    """The factor grid in the first axes, then each entry's embedding in its two most informative latents."""
    first = entries[0][1]
    ax = axes[0]
    _grid_lines(ax, first.factor_values, first.heldout)
    ax.set_xlabel(first.factor_names[0])
    ax.set_ylabel(first.factor_names[1])
    ax.set_title("factor grid" + (" (black: held out)" if first.heldout.any() else ""), fontsize=9)
    for ax, (title, g) in zip(axes[1:], entries):
        _grid_lines(ax, g.codes, g.heldout)
        if g.blank is not None:
            ax.plot(
                [g.blank[0]],
                [g.blank[1]],
                marker="*",
                color="black",
                markersize=14,
                linestyle="none",
                label="blank image",
            )
        ax.set_xlabel(f"z{g.latents[0]}")
        ax.set_ylabel(f"z{g.latents[1]}")
        ax.set_title(title, fontsize=9)
        if g.heldout.any() or g.blank is not None:
            ax.legend(fontsize=7)


def latent_geometry(entries: list[tuple[str, Geometry]]) -> Figure:
    """Figures 7, 8, 13-22: the factor grid (left), then its embedding in each run's two most informative latents."""
    return latent_geometry_lines([entries])


def latent_geometry_lines(lines: list[list[tuple[str, Geometry]]]) -> Figure:
    """One line of panels per dataset (as latent_geometry), e.g. SBD's and DeConv's seeds side by side."""
    width = max(len(entries) for entries in lines) + 1
    fig, axes = plt.subplots(len(lines), width, figsize=(3.6 * width, 3.6 * len(lines)), squeeze=False)
    for row, entries in zip(axes, lines):
        _geometry_panels(row, entries)
        for ax in row[len(entries) + 1 :]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)
