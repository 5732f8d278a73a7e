"""The app's private upload folder and its whole life: created per process, swept of
unanalysed uploads, removed on normal exit, SIGTERM and SIGINT, and reclaimed at the next
start when an instance died without cleaning up (SIGKILL, power loss).

Ownership is proven by an owner file inside the folder (pid, process start time, boot id),
so a folder is only ever removed when the process that made it is certainly gone.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

PREFIX = "lesion-app-"
OWNER_FILE = ".lesion-app-owner.json"
TTL_ENV = "LESION_UPLOAD_TTL_S"
DEFAULT_TTL_S = 60.0
_APP = "lesion-app"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after the last ')' are fixed.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_namespace() -> str | None:
    """This process's pid namespace: pids recorded in another one (another container) mean nothing here."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def identity(pid: int | None = None) -> dict:
    """What the owner file records for a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return {"app": _APP, "pid": pid, "start": _start_ticks(pid), "boot": _boot_id(), "pidns": _pid_namespace()}


def owner_alive(owner: dict) -> bool:
    """True unless the recorded process is certainly gone (or its pid now belongs to another process).

    When the start time cannot be compared (no /proc) or the folder was made in another pid
    namespace (another container sharing /tmp), the owner counts as alive: we would rather
    keep a stale folder than remove a live instance's.
    """
    if owner.get("pidns") != _pid_namespace():
        return True  # written in another container sharing this folder: its pid cannot be checked here
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the pid exists but belongs to another user
    now = identity(pid)
    if owner.get("boot") and now["boot"] and owner["boot"] != now["boot"]:
        return False  # recorded before a reboot: that process cannot be running
    if owner.get("start") is None or now["start"] is None:
        return True
    return owner["start"] == now["start"]


def read_owner(folder: Path) -> dict | None:
    """The folder's owner record, or None when the folder is not provably one of ours."""
    path = folder / OWNER_FILE
    try:
        if path.is_symlink():
            return None
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(owner, dict) or owner.get("app") != _APP or type(owner.get("pid")) is not int
            or owner["pid"] <= 0):  # pid <= 0 would address process groups in os.kill
        return None
    return owner


def remove_stale(parent: Path, prefix: str = PREFIX) -> list[Path]:
    """Removes `prefix*` folders in parent whose owner file names a process that is gone.

    Never touches a folder without a valid owner file, a symlink, another user's folder,
    or the folder of a live instance. Returns the folders removed.
    """
    removed = []
    for folder in sorted(Path(parent).glob(prefix + "*")):
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        owner = read_owner(folder)
        if owner is not None and not owner_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def upload_ttl() -> float:
    """Seconds an unanalysed upload may stay on disk (LESION_UPLOAD_TTL_S, default 60)."""
    raw = os.environ.get(TTL_ENV, "")
    try:
        ttl = float(raw) if raw.strip() else DEFAULT_TTL_S
    except ValueError:
        raise ValueError(f"{TTL_ENV} must be a number of seconds, got {raw!r}") from None
    if not ttl > 0:
        raise ValueError(f"{TTL_ENV} must be positive, got {raw!r}")
    return ttl


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def exit_now(code: int) -> None:
    """Ends the process at once, skipping the interpreter's shutdown (atexit and finalisation).

    Gradio runs requests in daemon threads. One still inside torch when the interpreter shuts
    down (an analysis in flight, or only the freeing of its tensors) is ended by force there,
    and that aborts the process: "terminate called without an active exception", status -6.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class UploadDir:
    """A folder private to this process, for Gradio's uploads (point GRADIO_TEMP_DIR at `path`).

    Contract: creating one first removes stale folders of dead instances in `parent`;
    `close()` removes the folder and everything in it (idempotent); after
    `install_exit_cleanup()`, that also happens on normal exit, SIGTERM and SIGINT; after
    `start_sweeper(ttl, keep)`, every file older than ttl whose sha256 is not in keep is
    deleted within about ttl + ttl/6 seconds of its arrival.
    """

    def __init__(self, parent: str | Path | None = None, prefix: str = PREFIX):
        parent = Path(parent or tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        self.stale_removed = remove_stale(parent, prefix)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mode 0700
        # Written under a temporary name and renamed, so no one ever reads half an owner file.
        tmp = self.path / (OWNER_FILE + ".tmp")
        tmp.write_text(json.dumps(identity()))
        os.replace(tmp, self.path / OWNER_FILE)
        self._previous: dict[int, object] = {}
        self._atexit = False

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def sweep(self, ttl: float, keep_digests: frozenset[str] = frozenset(), now: float | None = None) -> int:
        """Deletes files older than ttl seconds (by their latest mtime/ctime) unless their
        sha256 is in keep_digests, then empty subfolders. Returns how many files were deleted."""
        now = time.time() if now is None else now
        deleted = 0
        for root, dirs, files in os.walk(self.path, topdown=False):
            for name in files:
                p = Path(root, name)
                if p.parent == self.path and name == OWNER_FILE:
                    continue
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if now - max(st.st_mtime, st.st_ctime) <= ttl:
                    continue
                if not p.is_symlink() and _sha256(p) in keep_digests:
                    continue  # a bundled example: Gradio serves this copy for every example click
                p.unlink(missing_ok=True)
                deleted += 1
            for name in dirs:
                try:
                    Path(root, name).rmdir()  # only succeeds when empty; its name is a hash of the upload
                except OSError:
                    pass
        return deleted

    def start_sweeper(self, ttl: float, keep_digests: frozenset[str] = frozenset()) -> threading.Thread:
        """Runs sweep() every ttl/6 s (0.5 to 10 s) in a daemon thread until the folder is gone."""
        interval = max(0.5, min(ttl / 6, 10.0))

        def loop():
            while self.path.is_dir():
                try:
                    self.sweep(ttl, keep_digests)
                except Exception:  # noqa: BLE001 - a failed sweep must not stop later ones
                    pass
                time.sleep(interval)

        thread = threading.Thread(target=loop, name="upload-sweeper", daemon=True)
        thread.start()
        return thread

    def _on_signal(self, signum, frame) -> None:
        self.close()
        previous = self._previous.get(signum)
        if callable(previous):
            try:
                previous(signum, frame)  # Gradio's SSR handler: stops Node, then sys.exit(0)
            except (SystemExit, KeyboardInterrupt):
                pass  # (SIGINT's default handler raises KeyboardInterrupt): we stop below either way
        self.close()  # again: whatever a request in flight wrote meanwhile
        exit_now(0)   # asked to stop, and stopped cleanly

    def install_exit_cleanup(self) -> None:
        """Removes the folder at exit and on SIGTERM/SIGINT. On a signal, then does what the signal
        did before (Gradio's SSR handler stops Node) and ends the process at once (`exit_now`).

        Call it again after something else (Gradio's SSR mode) installs its own handlers: ours
        then runs first and hands over to theirs. Must be called from the main thread.
        """
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if current == self._on_signal or current == signal.SIG_IGN:
                continue  # already ours, or the host chose to ignore this signal
            self._previous[signum] = current
            signal.signal(signum, self._on_signal)
