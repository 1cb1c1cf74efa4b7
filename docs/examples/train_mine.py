"""A user's own training script, launched as Horovod users launch theirs (see docs/own-model.md):

    PYTHONPATH=docs/examples horovodrun -np 2 -H localhost:2 .venv/bin/python docs/examples/train_mine.py
    PYTHONPATH=docs/examples mpirun -np 2 .venv/bin/python docs/examples/train_mine.py train.steps=400
    srun --mpi=pmix python docs/examples/train_mine.py run.dir=runs/mine        # inside a Slurm allocation

Arguments are `section.key=value` overrides, as for `hpctrain train`. Run it again after an interruption and
it resumes from the newest checkpoint; a SIGUSR1/SIGTERM checkpoints and exits 75 (requeue me).
"""

import sys

import numpy as np
import torch
from mymodels import ConvNet, flip_and_jitter
from torch.utils.data import Dataset

import hpctrain


class Stripes(Dataset):
    """A map-style dataset (``len`` and ``[i]``): 3x32x32 images of stripes whose angle is the class."""

    def __init__(self, n: int, seed: int, classes: int = 10) -> None:
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, classes, n)
        ii, jj = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
        angle = self.y[:, None, None] * np.pi / classes
        waves = np.sin(0.5 * (ii * np.cos(angle) + jj * np.sin(angle)))
        self.x = (waves[:, None] + 0.5 * rng.standard_normal((n, 3, 32, 32))).astype(np.float32)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def label_smoothing_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


class MyTrainer(hpctrain.Trainer):
    """A custom step: anything before or after the built-in one (which all-reduces and steps)."""

    def train_step(self, inputs, target):
        loss = super().train_step(inputs, target)
        if self.step % 100 == 0 and self.rt.is_root:
            print(f"custom step hook at step {self.step}: loss {float(loss):.3f}", flush=True)
        return loss


if __name__ == "__main__":
    summary = hpctrain.fit(
        {"run": {"dir": "runs/mine", "log_every": 50}, "train": {"steps": 300, "batch_size": 32},
         "model": {"sync_batchnorm": True}},
        model=lambda: ConvNet(in_channels=3, num_classes=10, width=16),
        loss=label_smoothing_loss,
        train_data=Stripes(4096, seed=1), val_data=Stripes(512, seed=2),
        transform=flip_and_jitter,
        trainer_class=MyTrainer,
        overrides=sys.argv[1:])
    if summary.get("val_accuracy") is not None:
        print(f"validation accuracy {summary['val_accuracy']:.1%}")
