"""Case-report PDFs (and the reader mode's answer CSVs) handed to a browser or an API client, and
their short life.

Each file is written under the app's private upload folder (`root`, the app's GRADIO_TEMP_DIR),
in a folder of its own with a random name, so Gradio serves it from where it lies (no copy). It is
removed as soon as it has been served once (`ServeOnce`, an ASGI middleware on the app), when the
session that asked for it ends (`end_session`), by the upload sweeper once older than the upload
lifetime, and with the whole private folder on exit, SIGTERM and SIGINT (lesion_app.files.upload_dir).
Nothing about the patient is written anywhere else.
"""
from __future__ import annotations

import secrets
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

FOLDER = "case-reports"
FILE_ROUTE = "/file="
SUFFIXES = (".pdf", ".csv")   # what this module writes, and so may serve once and remove


class ReportFiles:
    """The PDFs of one app process, by session."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve() / FOLDER
        self._lock = threading.Lock()
        self._sessions: dict[str, set[Path]] = {}

    def write(self, pdf: bytes, session: str | None = None, when: datetime | None = None,
              name: str | None = None, suffix: str = ".pdf") -> Path:
        """Writes pdf as <root>/case-reports/<random>/case_report_<UTC time>.pdf (folders 0700); or,
        given a name (no folder) and a suffix of SUFFIXES, as <random>/<name><suffix>."""
        when = when or datetime.now(timezone.utc)
        if suffix not in SUFFIXES or (name is not None and (not name or Path(name).name != name)):
            raise ValueError(f"a served file is a plain name ending in one of {SUFFIXES}")
        for attempt in range(3):
            folder = self.root / secrets.token_hex(16)
            path = folder / f"{name or f'case_report_{when:%Y%m%d-%H%M%S}'}{suffix}"
            try:
                folder.mkdir(mode=0o700, parents=True)
                path.write_bytes(pdf)
                break
            except FileNotFoundError:  # the upload sweeper removed the empty folder in between
                if attempt == 2:
                    raise
        if session:
            with self._lock:
                self._sessions.setdefault(session, set()).add(path)
        return path

    def owns(self, path: str | Path) -> bool:
        """True for a file this object wrote (a PDF or CSV two levels below its folder)."""
        try:
            p = Path(path).resolve()
        except (OSError, ValueError):
            return False
        return p.parent.parent == self.root and p.suffix in SUFFIXES

    def discard(self, path: str | Path) -> None:
        """Removes one file and its folder (nothing if it is not one of ours or already gone)."""
        if not self.owns(path):
            return
        p = Path(path).resolve()
        shutil.rmtree(p.parent, ignore_errors=True)
        with self._lock:
            for paths in self._sessions.values():
                paths.discard(p)

    def end_session(self, session: str | None) -> None:
        """Removes every PDF made for this session that is still there."""
        with self._lock:
            paths = self._sessions.pop(session, set()) if session else set()
        for p in paths:
            self.discard(p)

    def held(self) -> list[Path]:
        """Every file (PDF or CSV) still on disk."""
        return sorted(p for p in self.root.glob("*/*") if p.suffix in SUFFIXES) if self.root.is_dir() else []


class ServeOnce:
    """ASGI middleware: a GET of one of `files`' PDFs through Gradio's file route removes the PDF
    once its whole body has been sent (a HEAD, or a response that is not 200, leaves it)."""

    def __init__(self, app, files: ReportFiles):
        self.app, self.files = app, files

    def _served_path(self, scope) -> str | None:
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return None
        path = unquote(scope.get("path", ""))
        at = path.find(FILE_ROUTE)
        if at < 0:
            return None
        target = path[at + len(FILE_ROUTE):]
        return target if self.files.owns(target) else None

    async def __call__(self, scope, receive, send):
        target = self._served_path(scope)
        if target is None:
            return await self.app(scope, receive, send)
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if (message["type"] == "http.response.body" and not message.get("more_body", False)
                    and status.get("code") == 200):
                self.files.discard(target)

        await self.app(scope, receive, watch)


def app_kwargs(files: ReportFiles) -> dict:
    """What `demo.launch(app_kwargs=...)` needs so that `files` are removed once served."""
    from starlette.middleware import Middleware
    return {"middleware": [Middleware(ServeOnce, files=files)]}
