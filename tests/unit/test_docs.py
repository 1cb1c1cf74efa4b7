import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from hpctrain import config
from tests.launch import HPCTRAIN, QUIET, env

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_configuration_doc_lists_every_key_as_the_code_describes_it():
    doc = (DOCS / "configuration.md").read_text()
    missing = [line for line in config.describe().splitlines() if line not in doc]
    assert not missing, "docs/configuration.md is out of date; regenerate with `make docs`:\n" + \
        "\n".join(missing)


# --- lists the code owns and the docs repeat: each compared with the code, so neither drifts alone --------

def _section(doc: str, heading: str) -> str:
    text = (DOCS / doc).read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start:end if end != -1 else None]


def _table_column(section: str) -> list[str]:
    """The first cell of every body row of the first Markdown table in ``section``."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return [row.split("|")[1].strip() for row in rows[2:]]


def test_exit_codes_table_and_cli_docstring_list_the_codes_cli_uses():
    from hpctrain import cli

    code_values = {v for k, v in vars(cli).items() if k.startswith("EXIT_")}
    interrupts = {128 + signal.SIGINT, 128 + signal.SIGTERM}  # sys.exit(130) in main, 128 + signum in cmd_data
    table = {int(c) for cell in _table_column(_section("getting-started.md", "## Exit codes"))
             for c in re.findall(r"\d+", cell)}
    assert table == code_values | interrupts
    documented = {int(c) for c in re.findall(r"\b(\d+)\b", cli.__doc__.split("Exit codes:")[1])}
    assert documented == code_values | interrupts


def test_launchers_doc_names_every_launcher_table_in_its_order():
    from hpctrain.launchers import LAUNCHERS

    text = " ".join(_section("getting-started.md", "## Launchers").split())
    forced = re.search(r"HPCTRAIN_LAUNCHER=([\w|-]+)", text).group(1).split("|")
    assert sorted(forced) == sorted([*LAUNCHERS, "single"])
    # the doc gives each launcher's rank variable (OpenMPI's as a prefix) in the order they are tried
    positions = []
    for table in LAUNCHERS.values():
        var = table["rank"]
        hits = [text.find(f"`{v}") for v in (var, var.rsplit("_", 1)[0] + "_*") if f"`{v}" in text]
        assert hits, f"docs/getting-started.md: launcher variable {var} is not named"
        positions.append(min(hits))
    assert positions == sorted(positions), "docs/getting-started.md lists the launchers out of LAUNCHERS' order"


def test_step_time_phases_in_the_docs_are_the_ones_measured():
    from hpctrain import metrics, run_report

    assert run_report.PHASES == metrics.PHASES
    line = next(line for line in (DOCS / "performance.md").read_text().splitlines() if "`breakdown_ms`" in line)
    listed = line.split("`breakdown_ms`:")[1].split("(")[0]
    assert [p.strip() for p in listed.split(",")] == list(metrics.PHASES)


def _watchdog_phases() -> tuple[set[str], set[str]]:
    """Every phase a rank can report to the watchdog (the strings train.py and checkpoint.py pass it), and
    those the watchdog calls waiting for another rank (Watchdog.WAITS). The phases have no constant (yet):
    read the source."""
    from hpctrain.checkpoint import Watchdog

    src = {name: (ROOT / "hpctrain" / name).read_text() for name in ("train.py", "checkpoint.py")}
    phases = set(re.findall(r"watchdog\.(?:enter\(|beat\(self\.step, )\"([^\"]+)\"", src["train.py"]))
    phases |= set(re.findall(r"self\.phase = \"([^\"]+)\"", src["checkpoint.py"]))
    return phases, set(Watchdog.WAITS)


def test_fault_tolerance_doc_names_the_watchdog_phases_as_the_watchdog_prints_them():
    phases, waiting = _watchdog_phases()
    assert {"all-reduce", "data", "checkpoint"} <= phases  # the source scan found them
    text = " ".join((DOCS / "fault-tolerance.md").read_text().split())
    listed = re.search(r"logs the phase it is stuck in \(([^;]*);", text).group(1)
    assert {p.strip(" `") for p in listed.split(",")} == phases
    said_waiting = re.search(r"a rank stuck in (.*?) is waiting for a peer", text).group(1)
    assert set(re.findall(r"`([^`]+)`", said_waiting)) == waiting


def test_checkpoint_files_table_lists_the_files_a_checkpoint_has():
    from hpctrain import checkpoint

    cells = _table_column(_section("fault-tolerance.md", "## Checkpoints"))
    files = [name for cell in cells for name in re.findall(r"`([^`]+)`", cell)]
    assert sorted(files) == sorted([*checkpoint.TENSOR_FILES, checkpoint.STATE_FILE, checkpoint.MANIFEST])


def test_extra_pt_row_names_the_keys_a_checkpoint_writes_and_no_missing_schedule():
    src = (ROOT / "hpctrain" / "train.py").read_text()
    written = re.findall(r"\"(\w+)\":", re.search(r"\"extra\.pt\": \{(.*?)\}\}", src, re.S).group(1))
    assert "lr_scheduler" in written  # the source scan found the dict
    doc = (DOCS / "fault-tolerance.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `extra.pt`"))
    named = re.findall(r"`(\w+)`:", row)
    assert sorted(named) == sorted(written)
    text = " ".join((DOCS / "fault-tolerance.md").read_text().split())
    assert (ROOT / "hpctrain" / "optim" / "schedule.py").exists() and "no LR schedule" not in text


def test_digits_config_states_the_validation_count_data_digits_writes(tmp_path):
    pytest.importorskip("sklearn")
    subprocess.run([str(Path(HPCTRAIN).parent / "python"), str(ROOT / "data" / "digits.py"), "--out", str(tmp_path)],
                   env=env(), check=True, capture_output=True, timeout=300)
    n = json.loads((tmp_path / "val" / "manifest.json").read_text())["shards"][0]["samples"]
    stated = re.search(r"on the (\d+) held-out images", (ROOT / "configs" / "digits.toml").read_text()).group(1)
    assert int(stated) == n
    assert f"{n} validation images" in (ROOT / "data" / "digits.py").read_text()


def test_data_format_doc_lists_the_compressions_and_synthetic_tasks():
    from hpctrain.cli import _parser
    from hpctrain.data.convert import SPLITS, SYNTH_TASKS
    from hpctrain.data.format import COMPRESSIONS

    text = (DOCS / "data-format.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("| `chunk_samples`, `compression`"))
    assert re.findall(r"`(\w+)`", line.split("filter used in every shard")[1]) == list(COMPRESSIONS)
    tasks = re.search(r"--task ([\w\\|]+)", text).group(1).split("\\|")
    assert tasks == list(SYNTH_TASKS)
    synth = _parser()._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices["synth"]
    choices = {a.dest: a.choices for a in synth._actions if a.choices}
    assert list(choices["compression"]) == list(COMPRESSIONS) and list(choices["task"]) == list(SYNTH_TASKS)
    assert list(choices["split"]) == list(SPLITS)


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    """summary.json of a real 3-step run (one process, synthetic data with a validation set)."""
    run_dir = tmp_path_factory.mktemp("run")
    subprocess.run([HPCTRAIN, "train", "model.name=mlp", "train.steps=3", "data.val_samples=64",
                    f"run.dir={run_dir}", "run.progress=off", *QUIET,
                    "checkpoint.at_end=false"], env=env(), check=True, capture_output=True, timeout=300)
    return json.loads((run_dir / "summary.json").read_text())


# (doc, key) for every summary.json key a doc names in prose; the README's table row is read whole below
SUMMARY_KEYS_IN_PROSE = [
    ("architecture.md", "params_sha256"), ("fault-tolerance.md", "params_sha256"),
    ("fault-tolerance.md", "checkpoints.stall_s"), ("fault-tolerance.md", "checkpoints.written"),
    ("fault-tolerance.md", "step_time_ms.mean"), ("performance.md", "breakdown_ms"),
    ("training.md", "skipped_steps_per_rank"), ("training.md", "loss_scale_per_rank"),
    ("training.md", "grad_norm_per_rank"), ("training.md", "val_loss"), ("training.md", "val_accuracy"),
    ("training.md", "val_samples"),
]


def _lookup(summary: dict, dotted: str) -> bool:
    node = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_summary_keys_the_docs_name_are_in_a_real_summary(summary):
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `summary.json`"))
    readme = re.findall(r"`(\w+)`", row.split("|")[2])
    assert readme and all(_lookup(summary, k) for k in readme), readme
    for doc, key in SUMMARY_KEYS_IN_PROSE:
        assert key.split(".")[-1] in (DOCS / doc).read_text(), f"docs/{doc} no longer names {key}: update this list"
        assert _lookup(summary, key), f"docs/{doc} names summary.json key {key}, which a run does not write"
    # written by elastic runs only (tests/integration/test_elastic.py runs one)
    assert "elastic_world_sizes" in (DOCS / "fault-tolerance.md").read_text()
    assert 'extra["elastic_world_sizes"]' in (ROOT / "hpctrain" / "train.py").read_text()
