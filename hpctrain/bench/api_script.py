"""The ``api`` implementation of `hpctrain bench compare`: a user's own training script, written as the
Python API's users write theirs. It builds the model object itself and hands it to ``hpctrain.fit``; it is
launched as the raw Horovod loop is (``mpirun -np N python script.py``), and hpctrain writes the run's
``summary.json`` into ``run.dir`` as `hpctrain train` does, which is where bench compare reads samples/s.

    mpirun -np 2 python -m hpctrain.bench.api_script model.name=mymodels:gpt2 data.sample_shape=[64] \\
        data.sample_kind=tokens data.num_classes=256 train.steps=100 run.dir=/tmp/api

The ``section.key=value`` arguments are the ones bench compare gives `hpctrain train`, so the two entry points
differ only in how the model reaches the trainer (built here from ``model.name`` and ``model.args``, the way
a script would call ``gpt2(vocab_size=256, ...)`` or ``ConvNet()``; ``data.sample_*`` say what the
synthetic samples look like, since hpctrain cannot tell from an object).
"""

from __future__ import annotations

import sys

import torch

import hpctrain
from hpctrain import models


def main(overrides: list[str]) -> None:
    cfg = hpctrain.load_config(None, overrides)
    torch.manual_seed(cfg.train.seed)  # the initial weights the peers and `hpctrain train` start from
    model = models.build(cfg.model)  # a script's `model = MyNet(**args)`
    hpctrain.fit(cfg, model=model)


if __name__ == "__main__":
    main(sys.argv[1:])
