"""Writes the README's quickstart pictures from a finished quickstart run.

    sbvae-train fit --config configs/quickstart.yaml
    python docs/quickstart_pictures.py runs/quickstart/version_0

Writes two PNG files into the run folder, or into --out (``--out docs`` redraws the README's):

- quickstart-traversals.png: the traversal of the run's last.ckpt around validation image 0, drawn as
  sbvae-report draws its traversals (sbvae.report.probes.traversal). Each row is one latent, sorted by
  mean posterior variance and labelled with its index, mean posterior std and mean KL (nats). Each
  column is labelled with the value the latent is set to.
- quickstart-reconstructions.png: the last ``reconstructions`` image the run logged to TensorBoard.

It also prints the run's last validation ELBO and latents used, the figures the README quotes.
"""

from __future__ import annotations

import argparse
import os

TRAVERSALS = "quickstart-traversals.png"
RECONSTRUCTIONS = "quickstart-reconstructions.png"
SCALARS = ("val/elbo", "val/latents_used")
FONT = 10  # points, at DPI: readable on a README page
DPI = 150
CELL_INCHES = 0.55  # one traversal image


def traversal_picture(checkpoint: str, path: str) -> None:
    """The labelled traversal of ``checkpoint``, saved to ``path``."""
    import matplotlib.pyplot as plt

    from sbvae.report import figures
    from sbvae.report.probes import load_run, traversal

    model, datamodule = load_run(checkpoint)
    t = traversal(model, datamodule, seed_row=0)
    rows, cols = len(t.labels), len(t.values)
    fig, ax = plt.subplots(figsize=(CELL_INCHES * cols, 0.4 + CELL_INCHES * rows))
    figures.traversal_axes(ax, t, "")
    pitch = t.cell + 2  # make_grid's 2-pixel padding
    ax.set_xticks([2 + j * pitch + t.cell / 2 for j in range(cols)])
    ax.set_xticklabels([f"{v:g}" for v in t.values], fontsize=FONT)
    ax.set_yticklabels(t.labels, fontsize=FONT, family="monospace")
    ax.set_xlabel("value of the row's latent; the others stay at the posterior mean", fontsize=FONT)
    # A header over the row labels, right-aligned with them (they end at the image's left edge).
    ax.annotate(
        "latent, posterior std, KL (nats)",
        (0, 1),
        xycoords="axes fraction",
        xytext=(-4, 6),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=FONT,
    )
    ax.set_title("each row sweeps one latent", fontsize=FONT)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    print(f"wrote {path} ({rows} latents x {cols} values, from {checkpoint})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run folder, e.g. runs/quickstart/version_0")
    parser.add_argument("--out", help="folder for the PNG files (default: the run folder; docs redraws the README's)")
    args = parser.parse_args()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoint = os.path.join(args.run, "checkpoints", "last.ckpt")
    events = EventAccumulator(args.run, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    missing = [t for t in SCALARS if t not in events.Tags()["scalars"]]
    missing += ["reconstructions"] if "reconstructions" not in events.Tags()["images"] else []
    missing += [checkpoint] if not os.path.isfile(checkpoint) else []
    if missing:  # checked before any picture is replaced
        raise SystemExit(
            f"quickstart_pictures: {args.run} has no {', '.join(missing)}: pass the folder of a finished "
            "quickstart run (it validates every data.steps_per_epoch steps)."
        )
    out = args.out or args.run
    os.makedirs(out, exist_ok=True)
    traversal_picture(checkpoint, os.path.join(out, TRAVERSALS))
    last = events.Images("reconstructions")[-1]
    path = os.path.join(out, RECONSTRUCTIONS)
    with open(path, "wb") as f:
        f.write(last.encoded_image_string)
    print(f"wrote {path} (after {last.step} steps)")
    for tag in SCALARS:
        value = events.Scalars(tag)[-1]  # logged at Lightning's index for the step, one below the count
        print(f"{tag} after {value.step + 1} steps: {value.value:.1f}")


if __name__ == "__main__":
    main()
