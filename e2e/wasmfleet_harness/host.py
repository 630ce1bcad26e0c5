"""What machine a benchmark ran on, as the benchmarks record and print it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["describe_machine", "machine_facts"]


def _proc_field(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


def machine_facts() -> dict[str, str]:
    """CPU model, cores, memory, kernel and Python version."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or "unknown CPU",
        "cores": str(os.cpu_count()),
        "memory": f"{int(memory.split()[0]) / (1 << 20):.0f} GiB" if memory else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def describe_machine() -> str:
    """The facts as one line: ``2 vCPUs (model), 24 GiB, Linux ..., Python ...``."""
    facts = machine_facts()
    return (
        f"{facts['cores']} vCPUs ({facts['cpu']}), {facts['memory']}, Linux {facts['kernel']}, "
        f"Python {facts['python']}"
    )
