"""Process-level speed settings that must be in place before PyTorch starts.

PyTorch on CPU spends about half its time in glibc ``malloc`` page faults on these convnets;
with tcmalloc preloaded, training and inference here ran ~2x faster (docs/benchmarks.md). The
allocator can only be swapped at process start, so the command-line entry re-executes itself
once with ``LD_PRELOAD`` set when the library is installed (Debian: ``libtcmalloc-minimal4``,
which ``install.sh`` installs). ``NAPARI_POSE_TCMALLOC=0`` turns this off.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)


def find_tcmalloc() -> str | None:
    """Path of tcmalloc (minimal) on this machine, or ``None``."""
    for candidate in _CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return ctypes.util.find_library("tcmalloc_minimal")


def preload_tcmalloc() -> None:
    """Re-execute the current command with tcmalloc preloaded, when possible and not done yet.

    Only on Linux, only when the library exists, and only once (the new process sees it in
    ``LD_PRELOAD``). Returns normally when nothing is to be done.
    """
    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_POSE_TCMALLOC") == "0":
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return
    library = find_tcmalloc()
    if library is None:
        return
    env = dict(os.environ, LD_PRELOAD=f"{library} {preload}".strip())
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
