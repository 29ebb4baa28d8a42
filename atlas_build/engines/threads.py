"""How many CPU threads torch gets, chosen rather than left to torch's default.

torch's default is one thread per core of the machine, whatever this process may actually use (CPU
affinity, a container's CPU quota) and however busy the cores are. On a busy 2-core machine the routing
step of the tiny model ran 12-34x slower with the default than with one thread: OpenMP threads spin
against each other in a small model's many small parallel regions (issue 12). So:

- `--threads N` is used as given;
- a small model (under SMALL_MODEL_PARAMS parameters) on the CPU gets one thread;
- anything else gets the CPUs this process can really use (`available_cpus`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Below this, a forward pass is many parallel regions too small to share between threads.
SMALL_MODEL_PARAMS = 100_000_000


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def choose_threads(requested: int | None, n_params: int, device: str) -> tuple[int, str]:
    """The thread count for torch and why, e.g. `(1, "small model on the CPU")`.

    Args:
        requested: `--threads` (None: choose).
        n_params: the model's parameter count.
        device: "cpu", "cuda" or "meta".
    """
    if requested is not None:
        return requested, "--threads"
    if device == "cpu" and n_params < SMALL_MODEL_PARAMS:
        return 1, f"small model (< {SMALL_MODEL_PARAMS // 1_000_000}M parameters) on the CPU"
    cpus = available_cpus()
    return cpus, f"the {cpus} CPU(s) this process may use"
