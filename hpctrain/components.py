"""Where users' code enters: one resolver for models, losses, metrics and batch transforms.

A component is named in the config either by a built-in name or by an import path
``"package.module:callable"``. The same resolver serves the CLI, the Python API, checkpoints (which record
the path and its arguments) and distillation teachers. Calling user code goes through :func:`call`, which
turns anything it raises into one :class:`UserCodeError` line naming the config key, followed by the
user's own frames of the traceback (not hpctrain's), so a typo in a model reads like a typo, not like a
crash of hpctrain.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpctrain.config import ConfigError
from hpctrain.errors import UserError

_OWN_DIR = str(Path(__file__).resolve().parent)
# frames that are only plumbing between hpctrain and the user's code: torch's module call wrappers
_PLUMBING = ("torch/nn/modules/module.py", "torch/utils/_contextlib.py")


class UserCodeError(ConfigError):
    """The user's code named by a config key could not be imported, or raised when called."""


def resolve(path: str, key: str) -> Callable[..., Any]:
    """The callable at ``"package.module:attr"`` (``attr`` may be dotted); errors name ``key``."""
    from hpctrain.config import is_import_path

    if not is_import_path(path):
        raise UserCodeError(f"{key}: {path!r} is not an import path \"package.module:callable\"")
    module_name, _, attr = path.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: a module beside the config is found (after PYTHONPATH)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        where = "it" if missing == module_name else f"{missing!r}, which it imports,"
        raise UserCodeError(f"{key}: cannot import module {module_name!r}: {where} was not found; is its "
                            "directory on PYTHONPATH (on every node)?") from None
    except Exception as e:  # noqa: BLE001 - any error in the user's module body is theirs to see
        raise UserCodeError(f"{key}: importing {module_name!r} raised {type(e).__name__}: {e}"
                            f"{user_traceback(e)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise UserCodeError(f"{key}: {module_name!r} has no attribute {attr!r} (it has: "
                                f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''})") from None
    if not callable(obj):
        raise UserCodeError(f"{key}: {path} is a {type(obj).__name__}, not a callable")
    return obj


def call(fn: Callable[..., Any], key: str, what: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; an exception becomes a UserCodeError: ``key: what raised ...`` + their frames."""
    try:
        return fn(*args, **kwargs)
    except UserError:  # already one line of hpctrain's (e.g. a check of what the user's code returned)
        raise
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; it is reported, not hidden
        raise UserCodeError(f"{key}: {what} raised {type(e).__name__}: {_one_line(e)}{user_traceback(e)}") \
            from None


def name_of(fn: Any) -> str:
    """``module:qualname`` of a callable (or of an object's class), as a config would name it."""
    target = fn if callable(fn) and hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(fn).__name__)}"


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def user_traceback(e: BaseException) -> str:
    """The frames of ``e``'s traceback outside hpctrain and torch's call plumbing, as text after a newline
    (empty when no frame is the user's)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_OWN_DIR) and not f.filename.endswith(_PLUMBING)
              and "importlib._bootstrap" not in f.filename]
    if not frames:
        return ""
    body = "".join(traceback.format_list(frames)).rstrip()
    return f"\nTraceback of your code (most recent call last):\n{body}\n{type(e).__name__}: {e}"
