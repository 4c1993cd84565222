"""Peak memory of one call, measured the same way by every benchmark here.

CUDA: ``max_memory_allocated`` above what was allocated before the call. CPU: ``VmHWM - VmRSS``
around the call, after resetting VmHWM through ``/proc/self/clear_refs`` (run the process with
``MALLOC_MMAP_THRESHOLD_`` so freed buffers go back to the OS and the RSS baseline is honest).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return 1024 * int(line.split()[1])
    raise RuntimeError(field)


def reset_cpu_peak() -> None:
    """Set this process's VmHWM back to its current VmRSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def sync(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(fn: Callable[[], object], device: str) -> float:
    """Bytes allocated at the peak of ``fn()`` above the state before it (call it warmed up)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    reset_cpu_peak()
    before = status_bytes("VmRSS")
    fn()
    return float(status_bytes("VmHWM") - before)
