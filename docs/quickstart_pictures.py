"""Writes the README's quickstart pictures from a quickstart run's TensorBoard log.

    sbvae-train fit --config configs/quickstart.yaml
    python docs/quickstart_pictures.py runs/quickstart/version_0

Copies the last ``traversals/seed_0`` and ``reconstructions`` images the run logged (PNG, as logged) to
docs/quickstart-traversals.png and docs/quickstart-reconstructions.png, and prints the run's last
validation ELBO and latents used, the figures the README quotes.
"""
from __future__ import annotations

import argparse
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HERE = os.path.dirname(os.path.abspath(__file__))
PICTURES = {"traversals/seed_0": "quickstart-traversals.png", "reconstructions": "quickstart-reconstructions.png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run folder, e.g. runs/quickstart/version_0")
    parser.add_argument("--out", default=HERE, help="folder for the PNG files (default: docs/)")
    args = parser.parse_args()
    events = EventAccumulator(args.run, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    missing = [t for t in ("val/elbo", "val/latents_used") if t not in events.Tags()["scalars"]]
    missing += [t for t in PICTURES if t not in events.Tags()["images"]]
    if missing:  # checked before any picture in docs/ is replaced
        raise SystemExit(f"quickstart_pictures: {args.run} has no {', '.join(missing)}: pass the folder of a "
                         "finished quickstart run (it validates every data.steps_per_epoch steps).")
    for tag, name in PICTURES.items():
        last = events.Images(tag)[-1]
        path = os.path.join(args.out, name)
        with open(path, "wb") as f:
            f.write(last.encoded_image_string)
        print(f"wrote {path} (step {last.step})")
    for tag in ("val/elbo", "val/latents_used"):
        last = events.Scalars(tag)[-1]
        print(f"{tag} at step {last.step}: {last.value:.1f}")


if __name__ == "__main__":
    main()
