"""`hpctrain slurm render`: what lands in the script, and what is refused (no cluster needed)."""

import shlex
import subprocess

import pytest

from hpctrain.slurm import JobOptions, SlurmError, render
from tests.launch import HPCTRAIN, run


def test_options_land_in_the_sbatch_block(tmp_path):
    script = render(None, [f"run.dir={tmp_path}", "optim.lr=0.1"],
                    JobOptions(nodes=4, gpus_per_node=4, time="2-00:00:00", partition="gpu", account="proj-1",
                               signal_grace_s=300, max_restarts=3))
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj-1",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue", f"#SBATCH --output={tmp_path}/logs/%x-%j.out",
                 f"DEFAULT_ARGS=(run.dir={tmp_path} optim.lr=0.1)",
                 "HPCTRAIN_MAX_RESTARTS=${HPCTRAIN_MAX_RESTARTS:-3}"):
        assert line in script.splitlines(), line
    assert script.count("#SBATCH --ntasks") == 1
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_arguments_are_single_shell_words(tmp_path):
    hostile = f"run.dir={tmp_path}/x y'z\"$(touch {tmp_path}/pwned)`id`"
    script = render(None, [hostile], JobOptions(output=f"{tmp_path}/%j.out"))
    line = next(ln for ln in script.splitlines() if ln.startswith("DEFAULT_ARGS=("))
    # what bash would put in the array: exactly the one argument, unexpanded
    out = subprocess.run(["bash", "-c", f"{line}; printf '%s\\n' \"${{DEFAULT_ARGS[@]}}\""], capture_output=True,
                         text=True).stdout
    assert out == hostile + "\n" and not (tmp_path / "pwned").exists()
    assert shlex.split(line[len("DEFAULT_ARGS=("):-1]) == [hostile]


@pytest.mark.parametrize("field, value, message", [
    ("job_name", "x$(reboot)", "--job-name"),
    ("job_name", "my job", "--job-name"),
    ("partition", "gpu\n#SBATCH --exclusive", "--partition"),
    ("account", "a'b", "--account"),
    ("time", "1h", "--time"),
    ("output", "/tmp/a b/%j.out", "--output"),
    ("nodes", 0, "--nodes"),
])
def test_hostile_or_wrong_job_options_are_refused(field, value, message):
    with pytest.raises(SlurmError, match=message):
        render(None, [], JobOptions(**{field: value}))


def test_run_dir_unfit_for_output_needs_output(tmp_path):
    with pytest.raises(SlurmError, match=r"run.dir .* pass --output"):
        render(None, [f"run.dir={tmp_path}/with space"], JobOptions())


def test_cli_exit_codes(tmp_path):
    bad = run([HPCTRAIN, "slurm", "render", "--job-name", "x;rm", f"run.dir={tmp_path}"], check=False)
    assert bad.returncode == 2 and "--job-name" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad_key = run([HPCTRAIN, "slurm", "render", "optim.lrr=1"], check=False)
    assert bad_key.returncode == 2 and "optim.lrr: unknown key" in bad_key.stderr
    ok = run([HPCTRAIN, "slurm", "render", "--ntasks", "8", f"run.dir={tmp_path}"])
    assert "#SBATCH --ntasks=8" in ok.stdout
