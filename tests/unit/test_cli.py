"""The `hpctrain` command's own help: what a user reads first."""

import pytest

from hpctrain import cli


def test_top_level_help_is_for_users_and_lists_the_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and "sys.exit" not in out  # not the module's docstring for developers
    for command in ("train", "config", "data", "bench", "info", "scaling", "slurm"):
        assert f"\n    {command} " in out
    for code in ("0   done", "1   unexpected failure", "2   bad input, config or launch", "75  stopped by"):
        assert f"\n  {code}" in out
    assert "mpirun -np N, horovodrun -np N (or --gloo), or\nsrun --mpi=pmix" in out
