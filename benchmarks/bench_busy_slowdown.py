"""How much slower training gets when one other busy process shares the machine, per OpenMP wait policy.

Two measurements, each in a fresh interpreter (``OMP_WAIT_POLICY`` is read once, when torch loads
libgomp), on a quiet machine and beside one competing busy-loop process:

* ``step``: the optimisation step of the depth student (forward, loss, backward, AdamW) on a batch
  already in memory, median of the timed steps: the model's own sensitivity to a competing process.
* ``train``: ``anydistill train`` on toyworld for a fixed number of steps with the shipped loader
  workers, wall time per step from the run's start to its end: what a user sees.

``ACTIVE``: threads spin while they wait; ``PASSIVE``: threads sleep at once (what the ``anydistill``
command sets unless the user set the variable); ``SPIN<N>``: libgomp's middle way, ``OMP_WAIT_POLICY``
unset and ``GOMP_SPINCOUNT=N`` (spin ``N`` iterations, then sleep). Configurations are run round-robin,
so a drift in the machine's speed touches all of them alike; the load average is recorded with each.

    python benchmarks/bench_busy_slowdown.py [--rounds 2] [--steps 15] [--train-steps 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import markdown_table, write_results

STEP_SCRIPT = r"""
import sys, time, torch
from anydistill.config import LossConfig, OptimConfig
from anydistill.data.toyworld import ToyWorldDataset
from anydistill.data.transforms import collate_samples, train_transforms
from anydistill.methods.supervised import SupervisedModule

steps = int(sys.argv[1])
torch.manual_seed(0)
module = SupervisedModule(task="depth", model_name="depth_tiny", loss=LossConfig(), optim=OptimConfig())
module.train()
opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
data = ToyWorldDataset("wide", 128, 16, seed=0, transform=train_transforms(128, module.model.input_multiple))
batch = collate_samples([data[i] for i in range(16)])
times = []
for i in range(steps + 2):
    start = time.perf_counter()
    loss = module.compute_loss(module(batch["image"]), batch)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - start)
print(1000 * sorted(times[2:])[len(times[2:]) // 2])
"""

BUSY_LOOP = "while True: pass"


def policy_env(policy: str) -> dict[str, str]:
    """The environment of a child process for ``ACTIVE``, ``PASSIVE`` or ``SPIN<N>``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("SPIN"):
        return {**env, "GOMP_SPINCOUNT": policy.removeprefix("SPIN")}
    return {**env, "OMP_WAIT_POLICY": policy}


def run_step(policy: str, steps: int) -> float:
    env = policy_env(policy)
    out = subprocess.run(
        [sys.executable, "-c", STEP_SCRIPT, str(steps)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_train(policy: str, steps: int, workdir: Path) -> float:
    """Wall milliseconds per step of a whole ``anydistill train`` run (start-up included, so a ratio of
    these understates the step's own slowdown a little)."""
    env = policy_env(policy)
    run_dir = workdir / f"run_{policy}_{time.monotonic_ns()}"
    config = Path(__file__).resolve().parent.parent / "configs" / "depth_toyworld.yaml"
    cmd = [
        sys.executable, "-m", "anydistill.cli", "train", "--config", str(config),
        f"run_dir={run_dir}", f"trainer.max_steps={steps}", "trainer.max_epochs=1000",
        "trainer.val_every_n_epochs=1000", "trainer.progress_bar=false", "data.train_count=256",
        "data.val_count=16",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return 1000 * (time.perf_counter() - start) / steps


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument(
        "--competitor", choices=["python", "yes"], default="python",
        help="the busy process: a Python busy loop, or `yes > /dev/null` (a loop of write system calls)",
    )  # fmt: skip
    parser.add_argument("--policies", default="ACTIVE,PASSIVE,SPIN10000", help="comma-separated")
    args = parser.parse_args()
    policies = args.policies.split(",")
    results: dict[str, list[float]] = {}
    loads: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for busy in (False, True):
                command = [sys.executable, "-c", BUSY_LOOP] if args.competitor == "python" else ["yes"]
                competitor = subprocess.Popen(command, stdout=subprocess.DEVNULL) if busy else None
                try:
                    if busy:
                        time.sleep(1.0)
                    for policy in policies[round_ % len(policies) :] + policies[: round_ % len(policies)]:
                        for kind in ("step", "train"):
                            key = f"{kind}|{policy}|{'busy' if busy else 'quiet'}"
                            ms = (
                                run_step(policy, args.steps)
                                if kind == "step"
                                else run_train(policy, args.train_steps, Path(tmp))
                            )
                            results.setdefault(key, []).append(ms)
                            loads.setdefault(key, []).append(load())
                            print(f"round {round_ + 1}: {key}: {ms:.0f} ms/step (load {load()})", flush=True)
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
    rows, data = [], {}
    for kind in ("step", "train"):
        for policy in policies:
            quiet = statistics.median(results[f"{kind}|{policy}|quiet"])
            busy = statistics.median(results[f"{kind}|{policy}|busy"])
            rows.append([
                "optimisation step (batch in memory)" if kind == "step" else "`anydistill train` (wall / step)",
                policy, f"{quiet:.0f}", f"{busy:.0f}", f"{busy / quiet:.1f}x",
                "; ".join(loads[f"{kind}|{policy}|busy"]),
            ])  # fmt: skip
            data[f"{kind}_{policy}"] = {
                "quiet_ms": results[f"{kind}|{policy}|quiet"],
                "busy_ms": results[f"{kind}|{policy}|busy"],
                "ratio_of_medians": busy / quiet,
            }
    header = [
        f"measured (competitor: {args.competitor})",
        "OpenMP wait",
        "quiet ms",
        "busy ms",
        "busy / quiet",
        "load average when busy",
    ]
    table = markdown_table(header, rows)
    print(table)
    command = "python benchmarks/bench_busy_slowdown.py " + " ".join(sys.argv[1:])
    name = "busy_slowdown" + ("" if args.competitor == "python" else f"_{args.competitor}")
    path = write_results(name, table, {"rounds": args.rounds, **data}, command.strip())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
