#!/usr/bin/env bash
# The README's conditioning pictures: train the four conditioning specs on the built-in digits
# and write a grid of (given, completed) pairs for each, plus an extended image, into
# docs/images/, the inpainting run's training curves, and the reverse process of the default and
# the autoregressive specs. About 15 minutes on a 2-core CPU. Usage: bash docs/figures.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/figures}"
for spec in inpainting outpainting column_extension wavelet_superres; do
  gud train "specs/$spec.gud" --out "$runs" --name "$spec" --quiet
  gud sample "$runs/$spec" -n 16 -o "docs/images/$spec"
done
# super-resolution from 4x4 images: the block means of test digits
python - "$runs" <<'PY'
import sys
import numpy as np
from gudlang.check import check_file
from gudlang.pipeline import load_spec_data
test = load_spec_data(check_file("specs/wavelet_superres.gud")).test[:16]
np.save(f"{sys.argv[1]}/small.npy", test.reshape(16, 1, 4, 2, 4, 2).mean(axis=(3, 5)))
np.save(f"{sys.argv[1]}/first.npy", test[:4])
PY
gud sample "$runs/wavelet_superres" --given "$runs/small.npy" -o docs/images/wavelet_superres_from_4x4
gud extend "$runs/column_extension" --image "$runs/first.npy" --columns 16 -o docs/images/column_extension_wide
gud plot "$runs/inpainting" --metrics -o docs/images/metrics.png
# samples coming about: standard-like soft conditioning against one PCA component at a time
for spec in digits autoregressive; do
  gud train "specs/$spec.gud" --out "$runs" --name "$spec" --quiet
  gud plot "$runs/$spec" --reverse -n 2 --frames 7 -o "docs/images/reverse_$spec.png"
done
rm -f docs/images/*.npz
