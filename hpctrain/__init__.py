"""hpctrain: HPC batch training for PyTorch.

``hpctrain.fit(config, model=..., loss=..., train_data=..., val_data=...)`` trains from a user's own script
(see docs/own-model.md); ``hpctrain.Trainer`` is the class it runs, to subclass for custom steps. Both are
imported on first use, so ``import hpctrain`` stays cheap for the CLI.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Trainer", "fit", "load_config"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "load_config"):
        from hpctrain import api

        return getattr(api, name)
    if name == "Trainer":
        from hpctrain.train import Trainer

        return Trainer
    raise AttributeError(f"module 'hpctrain' has no attribute {name!r}")
