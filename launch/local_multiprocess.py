"""Run N local processes x M fake CPU devices: the multi-host code path on one machine.

  python launch/local_multiprocess.py --num_processes=2 --devices_per_process=2 -- \\
      --config=configs/quickstart.py --workdir=workdirs/mp --config.train.num_steps=20
  python launch/local_multiprocess.py --dry-run -- --config=configs/quickstart.py --workdir=workdirs/mp

Each process runs `python -m mdm_jax.main <args after --> --coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=i` with XLA_FLAGS=--xla_force_host_platform_device_count=M and
JAX_PLATFORMS=cpu, so JAX sees N*M devices in N processes (collectives over gloo), exactly as
on N hosts. Output lines are prefixed with [i]. If any process fails, the others are stopped and
the launcher exits with the first failure's code. --dry-run prints the commands, one per line
(environment assignments first), and runs nothing.

Processes share the data directory: prepare the dataset first with one process (e.g. one
single-process run of the same config) so that N processes do not build it at the same time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(
    num_processes: int,
    devices_per_process: int,
    port: int,
    main_args: list[str],
    python: str = sys.executable,
) -> list[tuple[dict, list[str]]]:
    """[(extra environment, argv)] of each process."""
    env = {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    }
    return [
        (
            env,
            [
                python,
                "-m",
                "mdm_jax.main",
                *main_args,
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={num_processes}",
                f"--process_id={i}",
            ],
        )
        for i in range(num_processes)
    ]


def render(env: dict, argv: list[str]) -> str:
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.join(argv)])


def _pump(i: int, stream, out):
    for line in iter(stream.readline, ""):
        out.write(f"[{i}] {line}")
        out.flush()


def run(cmds, timeout: float | None = None) -> int:
    """Starts every process, streams their output, returns 0 or the first non-zero exit code."""
    procs, pumps = [], []
    for i, (extra, argv) in enumerate(cmds):
        env = {**os.environ, **extra}
        p = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        procs.append(p)
        t = threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
        t.start()
        pumps.append(t)
    code = 0
    try:
        remaining = list(procs)
        while remaining:
            for p in list(remaining):
                try:
                    rc = p.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                remaining.remove(p)
                if rc != 0 and code == 0:
                    code = rc
                    # A process that died leaves the others blocked in collectives: stop them.
                    for q in remaining:
                        q.terminate()
            if timeout is not None:
                timeout -= 0.5
                if timeout <= 0:
                    for q in remaining:
                        q.kill()
                    return 124
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for t in pumps:
            t.join(timeout=5)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], usage="%(prog)s [options] -- <mdm_jax.main arguments>"
    )
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: pick a free one)")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print the commands instead of running them",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all are killed")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        parser.error(
            "pass the mdm_jax.main arguments after --, e.g. -- --config=configs/quickstart.py "
            "--workdir=workdirs/mp"
        )
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    port = args.port or free_port()
    cmds = commands(args.num_processes, args.devices_per_process, port, rest)
    if args.dry_run:
        for env, cmd in cmds:
            print(render(env, cmd))
        return 0
    return run(cmds, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
