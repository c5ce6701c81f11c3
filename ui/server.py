"""Start the Streamlit app as a subprocess with the operator's settings (what ``ppssl serve`` calls)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterable

from engine.errors import PPSSLError
from indexer.header import HEADER_FILE
from ui.settings import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, Settings

APP = Path(__file__).resolve().parent / "app.py"
REPO = APP.parents[1]


class ServeError(PPSSLError, RuntimeError):
    """The app cannot be started with these settings, or did not come up."""


def streamlit_command(settings: Settings, *, port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line for these settings."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        # Always headless: a non-headless first run asks for an e-mail on stdin; serve() opens the browser.
        "--server.headless", "true",
        "--server.maxUploadSize", str(settings.max_upload_mb),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal",
        # Pages restore widget values after a page switch through session state, on purpose.
        "--global.disableWidgetStateDuplicationWarning", "true",
    ]


def make_settings(index_dir: str | os.PathLike | None, allow_roots: Iterable[str | os.PathLike] = (),
                  max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS,
                  compare_dir: str | os.PathLike | None = None) -> Settings:
    """Validate the operator's choices: existing indexes, existing allowed roots, positive limits."""
    index = compare = None
    if index_dir is not None:
        index = Path(index_dir).expanduser().resolve()
        if not (index / HEADER_FILE).is_file():
            raise ServeError(f"{index_dir}: not an index directory (no {HEADER_FILE}); build one with "
                             "`ppssl index build` or run `ppssl serve` without --index for the demo")
    if compare_dir is not None:
        compare = Path(compare_dir).expanduser().resolve()
        if not (compare / HEADER_FILE).is_file():
            raise ServeError(f"--compare {compare_dir}: not an index directory (no {HEADER_FILE})")
    roots = []
    for r in allow_roots:
        p = Path(r).expanduser().resolve()
        if not p.is_dir():
            raise ServeError(f"--allow-root {r}: not an existing directory")
        roots.append(p)
    if max_upload_mb <= 0 or max_pixels <= 0:
        raise ServeError("upload limits must be positive")
    return Settings(index_dir=index, allow_roots=tuple(roots), max_upload_mb=int(max_upload_mb),
                    max_pixels=int(max_pixels), compare_dir=compare)


def serve(index_dir: str | os.PathLike | None, allow_roots: Iterable[str | os.PathLike] = (), port: int = 8501,
          host: str = "127.0.0.1", max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB, headless: bool = True,
          block: bool = True, *, max_pixels: int = DEFAULT_MAX_PIXELS, quiet: bool = False,
          compare_dir: str | os.PathLike | None = None, qdrant: str | None = None):
    """Run the app on ``host:port`` serving ``index_dir``.

    Args:
        index_dir: the index to serve.
        allow_roots: folders the Build page may read from and write to (none: building is off).
        port, host: where to listen (loopback by default; use 0.0.0.0 deliberately).
        max_upload_mb: upload cap (Streamlit's ``server.maxUploadSize`` and the app's own check).
        headless: do not open a browser (otherwise one is opened when the app answers).
        block: wait for the server to exit (Ctrl-C stops it) and return None; otherwise return the
            ``subprocess.Popen`` at once (the caller stops it; see :func:`wait_until_ready`).
        max_pixels: decoded-size cap of uploads (decompression bombs).
        quiet: send the server's output to /dev/null (tests).
        compare_dir: an index over the same images shown beside ``index_dir`` on the Evaluate page.
        qdrant: search ``index_dir``'s Qdrant copy at this folder or URL (``ppssl index publish``).
    """
    settings = make_settings(index_dir, allow_roots, max_upload_mb, max_pixels, compare_dir)
    if qdrant:
        from dataclasses import replace

        settings = replace(settings, qdrant=str(qdrant))
    check_port_free(host, port)
    env = dict(os.environ)
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    # Queries are short bursts on a machine that may be busy: spinning OpenMP workers then fight other
    # processes for the cores and a forward pass gets ~10x slower (measured, benchmarks/results/ui.md).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = streamlit_command(settings, port=port, host=host)
    out = subprocess.DEVNULL if quiet else None
    if not quiet:
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
        print(f"ppssl serve: http://{shown}:{port}  (index {settings.index_dir}; Ctrl-C stops)", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=str(REPO))
    if not headless:
        _open_browser_when_ready(proc, port, host)
    if not block:
        return proc
    previous = _stop_child_on_sigterm()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return None
    finally:
        _restore_signals(previous)
        if proc.poll() is None:
            _stop(proc)
    if rc not in (0, -2, -15):
        raise ServeError(f"streamlit exited with status {rc}")
    return None


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port that something already listens on (a second ``ppssl serve``, say):
    Streamlit would otherwise print a traceback or quietly pick another port."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use (another ppssl serve?); stop it or "
                                 "pass --port N") from None
            raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_child_on_sigterm() -> dict:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so a killed ``ppssl serve`` stops its Streamlit child too."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signals(previous: dict) -> None:
    import signal

    for sig, h in previous.items():
        signal.signal(sig, h)


def _open_browser_when_ready(proc, port: int, host: str) -> None:
    """Open the app in the default browser once it answers (in the background; failures are ignored)."""
    import threading
    import webbrowser

    def run():
        try:
            wait_until_ready(port, "127.0.0.1" if host in ("0.0.0.0", "::") else host, timeout=120, proc=proc)
            webbrowser.open(f"http://localhost:{port}")
        except Exception:  # noqa: BLE001 - no browser, or the server did not come up (it reports why)
            pass

    threading.Thread(target=run, daemon=True).start()


def wait_until_ready(port: int, host: str = "127.0.0.1", timeout: float = 60.0, proc=None) -> None:
    """Poll Streamlit's health endpoint until it answers ``ok``; raise ServeError on timeout or exit."""
    url = f"http://{host}:{port}/_stcore/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServeError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise ServeError(f"no answer from {url} within {timeout:.0f} s")
