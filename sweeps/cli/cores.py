"""Each worker's share of this machine's cores: several workers on one host must not each start a
thread per core (4 workers on 2 cores, each spinning 2 threads, ran slower in all than one).

The share is the cores this process may use divided by the `sweeps run`/`sweeps worker` processes
running on this host when it starts (read from /proc; elsewhere the process counts as alone). An
explicit OMP_NUM_THREADS or --threads wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sweeps_processes(proc_root: Path = Path("/proc")) -> int:
    """`sweeps run` / `sweeps worker` processes on this host (this one included; at least 1)."""
    count = 0
    for proc in proc_root.glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if _is_sweep(words):
            count += 1
    return max(count, 1)


def _is_sweep(words: list[str]) -> bool:
    for i, word in enumerate(words):
        name = Path(word).name
        module = name == "sweeps" or (word == "-m" and i + 1 < len(words) and words[i + 1] == "sweeps")
        if module:
            rest = words[i + (2 if word == "-m" else 1):]
            return bool(rest) and rest[0] in ("run", "worker")
    return False


def share(explicit: int | None = None) -> int:
    """Threads for this worker: `explicit`, else $OMP_NUM_THREADS, else its share of the cores."""
    if explicit:
        return explicit
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, cores() // sweeps_processes())
