#!/usr/bin/env python3
"""Accuracy against bytes on disk and against non-zero parameters, one point per model, from the JSON that
`hpctrain evaluate --json` wrote (models at the same point share one label).

    python scaling_studies/plot_compression.py RESULTS.json OUT.png
"""

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    rows = json.load(open(src))["variants"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, scale, xlabel in ((axes[0], "bytes", 1e3, "bytes on disk (kB, log scale)"),
                                   (axes[1], "nonzero_params", 1, "non-zero parameters (log scale)")):
        points: dict[tuple[float, float], list[str]] = defaultdict(list)
        for row in rows:
            points[(row[key] / scale, 100 * row["val_accuracy"])].append(row["label"])
        for (x, y), labels in points.items():
            ax.scatter(x, y, s=30)
            ax.annotate(", ".join(labels), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    fig.suptitle("digits: accuracy vs size (scaling_studies/compression_digits.sh, hpctrain evaluate)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
