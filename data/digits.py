#!/usr/bin/env python3
"""Convert scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; ships with the package,
no download) into two hpctrain datasets: data/digits/train and data/digits/val.

The split is fixed (seeded, stratified by class): 1,438 training and 359 validation images. Pixels are
scaled from 0..16 to 0..1 and flattened to 64 features. The conversion itself goes through
`hpctrain data shard`, the same tool users run on their own arrays.

    python data/digits.py [--out data/digits]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "digits"))
    p.add_argument("--val-fraction", type=float, default=0.2)
    args = p.parse_args()
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(2026)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: round(args.val_fraction * (y == c).sum())]
                          for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), val)
    hpctrain = str(Path(sys.executable).parent / "hpctrain")
    with tempfile.TemporaryDirectory() as tmp:
        for split, idx in (("train", rng.permutation(train)), ("val", np.sort(val))):
            np.savez(Path(tmp) / f"{split}.npz", x=x[idx], y=y[idx])
            subprocess.run([hpctrain, "data", "shard", str(Path(args.out) / split), "--overwrite",
                            "--shards", "2" if split == "train" else "1",
                            "--field", f"x={tmp}/{split}.npz:x", "--field", f"y={tmp}/{split}.npz:y",
                            "--meta", "source=sklearn.datasets.load_digits", "--meta", "num_classes=10"],
                           check=True)


if __name__ == "__main__":
    main()
