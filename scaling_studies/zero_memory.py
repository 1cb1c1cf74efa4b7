"""ZeRO stages 0/1/2 (and activation checkpointing) side by side on 2 ranks: memory per rank from each run's
summary.json and step time, the configurations interleaved round by round so load on a shared machine hits
all alike. Calls the hpctrain CLI under mpirun; writes scaling_studies/results/zero-memory.{json,txt}.

    .venv/bin/python scaling_studies/zero_memory.py [--rounds 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hpctrain import intervals

REPO = Path(__file__).resolve().parents[1]
HPCTRAIN = str(Path(sys.executable).parent / "hpctrain")
MODELS = {
    "transformer": ["model.name=transformer", "model.width=256", "model.depth=4", "model.seq_len=64",
                    "model.vocab_size=256", "model.heads=4", "train.batch_size=8"],
    "cnn": ["model.name=cnn", "model.width=32", "model.depth=4", "model.image_size=32", "train.batch_size=16"],
    "mlp-21M": ["model.name=mlp", "model.width=2048", "model.depth=6", "model.input_dim=2048",
                "train.batch_size=32"],
}
RUNS = [(m, z, ac) for m in MODELS for z in (0, 1, 2) for ac in ((False, True) if m == "transformer" else (False,))]


def one(model: str, stage: int, recompute: bool, steps: int, ranks: int, where: Path) -> dict:
    d = where / f"{model}-z{stage}-ac{int(recompute)}"
    cmd = ["mpirun", "-np", str(ranks), "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1", HPCTRAIN,
           "train", *MODELS[model], "optim.name=adamw", "optim.lr=0.0005", f"train.steps={steps}",
           "train.untimed_steps=5", f"optim.zero_stage={stage}",
           f"model.activation_checkpointing={str(recompute).lower()}",
           "checkpoint.at_end=false", "run.report=false", "data.samples=4096", f"run.dir={d}", "--resume", "never"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    s = json.loads((d / "summary.json").read_text())
    return {"step_ms": s["step_time_ms"]["mean"], "memory": s["memory"], "params": s["num_parameters"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", default="zero-memory")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # interleaved: every configuration once per round
            for model, stage, ac in [x for x in RUNS if x[0] in args.models]:
                key = f"{model} z{stage}{' +ac' if ac else ''}"
                results.setdefault(key, []).append(one(model, stage, ac, args.steps, args.ranks, Path(tmp) / str(r)))
    mib = 2**20
    lines = [f"{'run':<22}{'params':>10}{'opt MiB':>9}{'grad MiB':>9}{'formula':>9}{'held':>8}{'RSS MiB':>9}"
             f"{'step ms':>9}{'x z0':>7}  {'paired x z0 (95% CI)':<22}verdict"]
    table = []
    for key, rs in results.items():
        mem = rs[0]["memory"]
        rank = max(mem["per_rank"], key=lambda x: x["optimizer_state_bytes"])
        each = [x["step_ms"] for x in rs]
        base_each = [x["step_ms"] for x in results[key.split(" ")[0] + " z0"]]
        step, base = statistics.median(each), statistics.median(base_each)
        # round by round against stage 0 of the same model (a step time: lower is better, "ahead" is faster)
        ci = None if key.endswith(" z0") else intervals.paired_ratio(each, base_each, higher_is_better=False)
        held = rank["params_bytes"] + rank["grads_bytes"] + rank["optimizer_state_bytes"]
        rss = statistics.median(max(p["peak_rss_bytes"] for p in x["memory"]["per_rank"]) for x in rs)
        row = {"run": key, "params": rs[0]["params"], "optimizer_state_mib": rank["optimizer_state_bytes"] / mib,
               "grads_mib": rank["grads_bytes"] / mib, "formula_mib": mem["formula"]["bytes_per_rank"] / mib,
               "held_mib": held / mib, "peak_rss_mib": rss / mib, "step_ms_median": step, "vs_stage0": step / base,
               "step_ms_each_round": each, "vs_stage0_paired": ci.as_dict() if ci else None}
        table.append(row)
        paired = ""
        if ci:
            cell = f"{ci.estimate:.2f} [{intervals.range_text(row['vs_stage0_paired'])}]"
            paired = f"{cell:<22}{ci.verdict}"
        lines.append(f"{key:<22}{row['params']:>10,}{row['optimizer_state_mib']:>9.1f}{row['grads_mib']:>9.1f}"
                     f"{row['formula_mib']:>9.1f}{row['held_mib']:>8.1f}{row['peak_rss_mib']:>9.0f}"
                     f"{step:>9.1f}{step / base:>7.2f}  {paired}")
    lines.append("x z0: ratio of the median step times; paired: geometric mean of the per-round ratios with its "
                 "t-interval (ahead: faster than stage 0, behind: slower, tie: the interval covers 1)")
    text = "\n".join(lines)
    print(text)
    out = REPO / "scaling_studies" / "results"
    note = (f"# {args.ranks} ranks, {args.rounds} interleaved rounds, {args.steps} steps (5 untimed), AdamW; "
            f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after\n"
            f"# command: .venv/bin/python scaling_studies/zero_memory.py --rounds {args.rounds} --steps {args.steps}"
            f" --models {' '.join(args.models)} --out {args.out}\n")
    (out / f"{args.out}.txt").write_text(note + text + "\n")
    (out / f"{args.out}.json").write_text(json.dumps({"command": note.splitlines()[1][11:], "rows": table}, indent=1))


if __name__ == "__main__":
    main()
