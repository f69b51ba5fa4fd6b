"""How long OpenMP threads should spin before they sleep: the demo's labeled student trained whole on a
quiet machine, and the depth student's optimisation step beside one busy process, per wait setting.

Settings (each run in a fresh interpreter: libgomp reads them when torch loads it): ``ACTIVE`` (spin),
``PASSIVE`` (sleep at once; the ``anydistill`` command's default), ``SPIN<N>`` (``OMP_WAIT_POLICY`` unset,
``GOMP_SPINCOUNT=N``: spin ``N`` iterations, then sleep). Round-robin over the settings, rotated each
round; the load average is recorded.

* ``quiet train``: ``anydistill.training.train`` of the demo's labeled-only student (``depth_tiny``,
  100 steps of batch 16 at 128², one loader worker, the demo's own config), wall seconds of the call;
* ``busy step``: the optimisation step of ``bench_busy_slowdown.py`` (batch in memory, median ms) beside a
  Python busy loop.

    python benchmarks/bench_openmp_spin.py [--rounds 2] [--policies PASSIVE,SPIN1000,SPIN10000,ACTIVE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_busy_slowdown import BUSY_LOOP, policy_env, run_step
from common import RESULTS, markdown_table, write_results

TRAIN_SCRIPT = r"""
import sys, time
from anydistill.demos.depth import DEFAULT, _config
from anydistill.training import train
out, run = __import__("pathlib").Path(sys.argv[1]), sys.argv[2]
cfg = _config(out, DEFAULT, "depth", "depth_tiny", run, DEFAULT.student_steps)
start = time.perf_counter()
train(cfg)
print(time.perf_counter() - start)
"""


def prepare(out: Path) -> None:
    """The demo's labeled (narrow) and test (wide) splits, rendered once."""
    from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET
    from anydistill.demos.common import write_split
    from anydistill.demos.depth import DEFAULT

    write_split(out / "data" / "labeled", DEFAULT.labeled_count, DEFAULT.image_size, "narrow", seed=0)
    write_split(
        out / "data" / "test",
        DEFAULT.test_count,
        DEFAULT.image_size,
        "wide",
        seed=TOYWORLD_HELDOUT_SEED_OFFSET,
    )


def run_train(policy: str, out: Path) -> float:
    run = f"run_{policy}_{time.monotonic_ns()}"
    done = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(out), run], env=policy_env(policy),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="busy step: timed steps per run")
    parser.add_argument("--policies", default="PASSIVE,SPIN1000,SPIN10000,ACTIVE")
    args = parser.parse_args()
    policies = args.policies.split(",")
    out = RESULTS.parent / "_out" / "openmp_spin"
    prepare(out)
    quiet: dict[str, list[float]] = {p: [] for p in policies}
    busy: dict[str, list[float]] = {p: [] for p in policies}
    loads: list[float] = []
    for round_ in range(args.rounds):
        order = policies[round_ % len(policies) :] + policies[: round_ % len(policies)]
        for policy in order:
            quiet[policy].append(run_train(policy, out))
            loads.append(os.getloadavg()[0])
            print(
                f"round {round_ + 1}: quiet train {policy}: {quiet[policy][-1]:.1f} s (load {loads[-1]:.2f})",
                flush=True,
            )
        competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            time.sleep(1.0)
            for policy in order:
                busy[policy].append(run_step(policy, args.steps))
                print(
                    f"round {round_ + 1}: busy step {policy}: {busy[policy][-1]:.0f} ms (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
        finally:
            competitor.kill()
            competitor.wait()
    rows = [[p, " / ".join(f"{s:.1f}" for s in quiet[p]), f"{statistics.median(quiet[p]):.1f}",
             " / ".join(f"{s:.0f}" for s in busy[p]), f"{statistics.median(busy[p]):.0f}"] for p in policies]  # fmt: skip
    header = ["OpenMP wait", "quiet train s (each round)", "median", "busy step ms (each round)", "median"]
    table = (
        markdown_table(header, rows)
        + f"\n\n1-min load average after each quiet run: {min(loads):.2f}–{max(loads):.2f}."
    )
    print(table)
    command = "python benchmarks/bench_openmp_spin.py " + " ".join(sys.argv[1:])
    write_results(
        "openmp_spin", table, {"quiet_train_s": quiet, "busy_step_ms": busy, "loads": loads}, command.strip()
    )


if __name__ == "__main__":
    main()
