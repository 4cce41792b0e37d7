"""Peak memory of a block of work: the kernel's RSS high-water mark on CPU, the allocator on CUDA.

torch's CPU allocations are invisible to tracemalloc, so on Linux we reset the resident-set
high-water mark (`/proc/self/clear_refs` = 5) after releasing freed heap (`malloc_trim`), and
report VmHWM minus the RSS at the start. CUDA: `max_memory_allocated` minus the allocation at the
start.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of a block of work: VmHWM on CPU (Linux), the CUDA allocator on GPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        """Release cached memory and reset the high-water mark."""
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _proc_status_kb("VmRSS")

    def peak_mb(self) -> float:
        """Peak increase since start() in MiB."""
        if self.device.startswith("cuda"):
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (_proc_status_kb("VmHWM") - self.base) / 1024


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")
