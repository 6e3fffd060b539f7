"""The kernels the kit starts for papermill talk over local IPC sockets, not TCP.

A kernel on TCP listens on loopback ports that any local user could connect to, and ipykernel
says so at every start ("Kernel is running over TCP without encryption ..."), a warning that
would fill the main job's output. Over IPC the channels are socket files in a private folder,
created for the kernel and removed after it.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from jupyter_client.manager import AsyncKernelManager


@contextmanager
def ipc_kernel_manager() -> Iterator[type]:
    """A kernel-manager class for ``papermill.execute_notebook(kernel_manager_class=...)`` whose kernels use IPC
    sockets in a private temporary folder (removed on exit)."""
    folder = Path(tempfile.mkdtemp(prefix="coursekit-kernel-"))
    folder.chmod(0o700)

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(folder / "kernel")  # the socket files are kernel-1, kernel-2, ...

    try:
        yield IPCKernelManager
    finally:
        shutil.rmtree(folder, ignore_errors=True)
