"""Submit mdm_jax.main to a SLURM GPU cluster: one process per node, all of its GPUs.

  python launch/slurm.py --nodes=4 --gpus_per_node=8 --partition=gpu --time=24:00:00 -- \\
      --config=configs/owt_mdm_small.py --workdir=/shared/runs/owt_mdm_small
  python launch/slurm.py --dry-run ...      # print the batch script, submit nothing

The batch script runs `srun python -m mdm_jax.main <args after -->` with one task per node;
inside the job JAX detects SLURM itself (mdm_jax.main calls jax.distributed.initialize when
SLURM_NTASKS > 1; the coordinator is the first node of the allocation), and each process drives
the node's GPUs. The script is submitted on stdin to `sbatch` (nothing is written to disk).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys


def batch_script(args, main_args: list[str]) -> str:
    directives = [
        f"--job-name={args.job_name}",
        f"--nodes={args.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={args.gpus_per_node}",
        f"--cpus-per-task={args.cpus_per_task}",
        f"--time={args.time}",
        f"--output={args.output}",
    ]
    if args.partition:
        directives.append(f"--partition={args.partition}")
    if args.account:
        directives.append(f"--account={args.account}")
    lines = (
        ["#!/bin/bash"]
        + [f"#SBATCH {d}" for d in directives]
        + [
            "set -euo pipefail",
            f"cd {shlex.quote(args.repo_dir)}",
            *([f"source {shlex.quote(args.venv)}/bin/activate"] if args.venv else []),
            "srun " + shlex.join([args.python, "-m", "mdm_jax.main", *main_args]),
        ]
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], usage="%(prog)s [options] -- <mdm_jax.main arguments>"
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--cpus_per_task", type=int, default=16)
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--job_name", default="mdm-jax")
    parser.add_argument("--output", default="slurm-%j.out")
    parser.add_argument("--repo_dir", default=".", help="repository root on the cluster's shared disk")
    parser.add_argument("--venv", default="", help="virtual environment to activate on each node")
    parser.add_argument("--python", default="python")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print the batch script instead of submitting it",
    )
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        parser.error(
            "pass the mdm_jax.main arguments after --, e.g. -- --config=configs/owt_mdm_small.py "
            "--workdir=/shared/runs/x"
        )
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus_per_node must be >= 1")
    script = batch_script(args, rest)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    return subprocess.run(["sbatch"], input=script, text=True).returncode


if __name__ == "__main__":
    sys.exit(main())
