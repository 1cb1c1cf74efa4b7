"""Exit codes, and the one place that turns exceptions into them, for the CLI and the Python API alike.

0 done; 1 unexpected failure (the whole MPI job is aborted, so no rank is left waiting in a collective);
2 bad input, config, data, user code or launch (one line on stderr); 75 checkpointed on request, requeue me
(EX_TEMPFAIL).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REQUEUE = 0, 1, 2, 75
T = TypeVar("T")


class UserError(Exception):
    """An error the user can fix (bad input, config, data or launch); the CLI exits 2 with its message.

    ``agreed=True`` says every rank raised it together (after a collective check), so the job can end
    cleanly on every rank; otherwise one rank may be alone with it and the CLI aborts the MPI world.
    """

    def __init__(self, message: str, agreed: bool = False) -> None:
        super().__init__(message)
        self.agreed = agreed


def env_rank() -> int:
    """This process's rank as the launcher says, before MPI is up (0 if it cannot tell)."""
    from hpctrain.launchers import detect_launcher

    try:
        return detect_launcher(os.environ).rank
    except UserError:
        return 0


def run_guarded(fn: Callable[[], T]) -> tuple[int, T | Any]:
    """``(EXIT_OK, fn())``, or the exit code of what ``fn`` raised after saying so on stderr; a failure that
    may be on one rank alone aborts the MPI world first."""
    from hpctrain import dist

    try:
        return EXIT_OK, fn()
    except UserError as e:
        if e.agreed:  # dist: every rank raised it together: one line, and a clean exit everywhere
            if dist.world_rank() == 0:
                print(f"hpctrain: error: {e}", file=sys.stderr, flush=True)
        elif dist.world_size() > 1:
            # dist: raised after MPI came up, maybe on one rank alone: name it and end every rank
            print(f"hpctrain: error (rank {dist.world_rank()}): {e}", file=sys.stderr, flush=True)
            dist.abort_world(EXIT_USAGE)
        elif env_rank() == 0:  # before MPI: every rank fails the same way, one line is enough
            print(f"hpctrain: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE, None
    except KeyboardInterrupt:
        return 130, None
    except Exception:
        traceback.print_exc()
        dist.abort_world(EXIT_FAILURE)  # dist: one rank's crash must not leave the others hanging
        return EXIT_FAILURE, None
