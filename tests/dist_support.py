"""Starting real ranks for the distributed tests: ``torchrun`` (``python -m
torch.distributed.run --standalone``) with 2 CPU processes on Gloo, the way users start
them, and the small driver :mod:`tests.dist_driver` for scenarios that need code around
the CLI."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("dist_driver.py")


def rank_env(**extra: str) -> dict[str, str]:
    """The environment of the ranks: this checkout first on the path, one torch thread
    per rank (two ranks share the CPU), a collective timeout that ends a test rather than
    hanging it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PASAM_DIST_TIMEOUT", "600")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def torchrun(*args: object, nproc: int = 2, options: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *options,
        *map(str, args),
    ]


def pasam_ranks(*args: object, nproc: int = 2, options: tuple[str, ...] = ()) -> list[str]:
    """``torchrun ... -m pasam_plugins.cli ARGS`` (= ``torchrun --no-python pasam ARGS``)."""
    return torchrun("-m", "pasam_plugins.cli", *args, nproc=nproc, options=options)


def run(cmd: list[str], *, timeout: float = 1200, env: dict[str, str] | None = None):
    """Run to the end; stdout and stderr together in ``.stdout``."""
    return subprocess.run(
        cmd,
        env=env or rank_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def session_processes(sid: int) -> list[int]:
    """Pids of the processes still alive in session ``sid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out
