"""Simulated browser sessions against a running ``ppssl serve`` on 127.0.0.1, speaking Streamlit's own
WebSocket protocol (``/_stcore/stream``, protobuf ``BackMsg`` / ``ForwardMsg``) the way the web client does.

A session opens the Search page, switches the query source to "Pick from the gallery" and presses
"Random gallery image": a real script run on the server that searches the index and renders the top-k
with thumbnails. :func:`run_sessions` starts N sessions at once in threads and returns, per query, the
latency from the click to the end of the script run, and any exception / error the page showed.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunResult:
    """What one script run sent back."""

    seconds: float  # from sending the rerun to the script_finished message
    widgets: dict[str, str] = field(default_factory=dict)  # widget id -> element type
    markdown: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # st.error bodies
    exceptions: list[str] = field(default_factory=list)  # exception elements (tracebacks shown on the page)
    images: int = 0  # st.image elements


class Session:
    """One browser tab: a WebSocket connection with its own Streamlit session."""

    def __init__(self, port: int, timeout: float = 120.0):
        from websockets.sync.client import connect

        self.timeout = timeout
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(
            f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], origin=f"http://127.0.0.1:{port}",
            open_timeout=timeout, max_size=None, compression=None))
        self.page_hash = ""

    def close(self) -> None:
        self._stack.close()

    def rerun(self, widgets: list | None = None) -> RunResult:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = self.page_hash
        for w in widgets or []:
            msg.rerun_script.widget_states.widgets.append(w)
        t0 = time.perf_counter()
        self.ws.send(msg.SerializeToString())
        out = RunResult(0.0)
        deadline = time.monotonic() + self.timeout
        while True:
            raw = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            fm = ForwardMsg()
            fm.ParseFromString(raw)
            kind = fm.WhichOneof("type")
            if kind == "new_session":
                self.page_hash = fm.new_session.page_script_hash or self.page_hash
            elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                el = fm.delta.new_element
                et = el.WhichOneof("type")
                if et == "exception":
                    out.exceptions.append(f"{el.exception.type}: {el.exception.message}")
                elif et == "alert" and el.alert.format == 1:  # ERROR
                    out.errors.append(el.alert.body)
                elif et == "markdown":
                    out.markdown.append(el.markdown.body)
                elif et == "imgs":
                    out.images += 1
                elif et is not None and hasattr(getattr(el, et), "id"):
                    wid = getattr(getattr(el, et), "id")
                    if wid:
                        out.widgets[wid] = et
            elif kind == "script_finished":
                status = fm.script_finished
                if status in (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR):
                    out.seconds = time.perf_counter() - t0
                    if status == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                        out.exceptions.append("compile error")
                    return out

    @staticmethod
    def widget_id(run: RunResult, key: str) -> str:
        ids = [w for w in run.widgets if w.endswith("-" + key)]
        if len(ids) != 1:
            raise RuntimeError(f"widget {key!r} not found on the page (widgets: {sorted(run.widgets)})")
        return ids[0]


def gallery_query(port: int, timeout: float = 120.0, ids: dict | None = None) -> dict:
    """One visitor: open the app, pick "Pick from the gallery", press "Random gallery image".

    ``ids``: the two widget ids (``{"radio", "button"}``, from an earlier visitor's result); then the page is
    opened with both widget states in one script run, as a browser restoring a session would. Returns
    ``{"open_s", "query_s", "results", "errors", "exceptions", "ids"}``.
    """
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    s = Session(port, timeout)
    try:
        if ids is None:
            first = s.rerun()
            ids = {"radio": Session.widget_id(first, "search_source")}
            radio = WidgetState(id=ids["radio"], string_value="Pick from the gallery")
            second = s.rerun([radio])
            ids["button"] = Session.widget_id(second, "search_pick_random")
            runs = [first, second]
        else:
            radio = WidgetState(id=ids["radio"], string_value="Pick from the gallery")
            runs = []
        third = s.rerun([radio, WidgetState(id=ids["button"], trigger_value=True)])
        runs.append(third)
        return {"open_s": runs[0].seconds if len(runs) > 1 else None, "query_s": third.seconds,
                "results": sum(m.startswith("**#") for m in third.markdown), "ids": ids,
                "errors": [e for r in runs for e in r.errors], "exceptions": [e for r in runs for e in r.exceptions]}
    finally:
        s.close()


def run_sessions(port: int, n: int, timeout: float = 300.0, ids: dict | None = None) -> list[dict]:
    """``n`` visitors at once (threads released together); one dict per session (``error`` on failure).
    ``ids``: see :func:`gallery_query` (one script run per visitor instead of three)."""
    out: list[dict] = [{} for _ in range(n)]
    barrier = threading.Barrier(n)

    def visit(i: int) -> None:
        try:
            barrier.wait(timeout)
            out[i] = gallery_query(port, timeout, ids)
        except Exception as exc:  # noqa: BLE001 - reported per session
            out[i] = {"error": f"{type(exc).__name__}: {exc}"}

    threads = [threading.Thread(target=visit, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    return out
