"""One writer per run folder: :class:`RunLock`, a lock file holding the owner's pid.

``train`` (new runs and ``--resume``) holds ``RUN/.lock`` while it writes the
folder. The lock is an ``flock`` on that file, so the kernel releases it when
the owner dies however it dies (SIGKILL included); the pid inside only serves
the messages. A lock file left by a dead process is taken over with a warning.
Where ``flock`` does not exist (Windows) the pid alone decides: a lock whose
process is gone is stale.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from types import TracebackType
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # the pid-only fallback below

#: The lock file's name inside a run folder.
LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process is writing the run folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(text: str) -> tuple[int | None, str]:
    """``(pid, host)`` written in a lock file (``None`` when unreadable)."""
    fields = text.split()
    try:
        pid = int(fields[0])
    except (IndexError, ValueError):
        return None, ""
    return pid, fields[1] if len(fields) > 1 else ""


class RunLock:
    """Exclusive write access to a run folder while the ``with`` block runs.

    Args:
        run_dir: The run folder (must exist).

    Raises:
        RunLockedError: On entry, when a live process holds the lock (the message
            names its pid and what to do).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (see the class doc)."""
        if self._fh is not None:
            return
        while True:
            fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
            try:
                fh.seek(0)
                previous = fh.read()
                if fcntl is not None:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        pid, host = _owner(previous)
                        raise RunLockedError(self._busy(pid, host)) from None
                    # Another process may have removed the file between our open and our
                    # flock (it released the lock): then we hold a lock on a dead inode.
                    try:
                        same = os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        fh.close()
                        continue
                else:  # pragma: no cover - Windows
                    pid, host = _owner(previous)
                    if pid is not None and pid != os.getpid() and _pid_alive(pid):
                        raise RunLockedError(self._busy(pid, host))
                pid, host = _owner(previous)
                if pid is not None:
                    warnings.warn(
                        f"{self.path}: taking over the lock of process {pid}"
                        + (f" on {host}" if host else "")
                        + ", which is gone (it stopped without releasing it).",
                        stacklevel=3,
                    )
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()} {socket.gethostname()}\n")
                fh.flush()
            except BaseException:
                fh.close()
                raise
            self._fh = fh
            return

    def _busy(self, pid: int | None, host: str) -> str:
        who = f"process {pid}" + (f" on {host}" if host else "") if pid else "another process"
        return (
            f"{self.run_dir} is being written by {who} (lock file {self.path}); one run folder "
            "takes one writer. Wait for it to finish or stop it, then run again."
        )

    def release(self) -> None:
        """Give the lock up and remove the lock file."""
        if self._fh is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._fh.close()  # closing releases the flock
            self._fh = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
