#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py installs on a GPU machine that has no network: sbvae itself and the
# pure-Python packages its image lacks (jsonargparse with its [signatures] extras). The image already has
# torch, lightning, tensorboard, h5py, scikit-learn, matplotlib and the rest (see the device tool's KINDS.md).
# Run it here, with network, before the GPU window; then carry benchmarks/wheels (a few hundred KB).
#   bash benchmarks/download_wheels.sh [FOLDER]      # default: benchmarks/wheels
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/wheels}"
mkdir -p "$out"
rm -f "$out"/*.whl  # one version of each: two would make the offline install ambiguous
# The GPU machine's Python is 3.12 on manylinux x86-64; these are pure-Python wheels, so any pip can fetch them.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$out" "jsonargparse>=4.27" docstring-parser typeshed-client
python3 -m pip wheel --quiet --no-deps -w "$out" .
rm -rf build sbvae.egg-info
ls -1 "$out"
