"""Nothing run while you were away is lost: a cell that runs on after its browser went keeps
its output, in the notebook file there and, after a sync, at home. Driven as JupyterLab 4
drives the server: a session for the notebook, the kernel's websocket (its v1 protocol),
execute requests tagged with the cell's id."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket
from helpers import api, run_rjn, wait_for

# A 1x1 PNG: the figure the cell saves and displays.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
AWAY_CELL = f"""\
import base64, pathlib, time
from IPython.display import Image, display
png = base64.b64decode({base64.b64encode(PNG).decode()!r})
for step in range(3):
    print("step", step, flush=True)
    time.sleep(1)
pathlib.Path("results").mkdir(exist_ok=True)
pathlib.Path("results/away.png").write_bytes(png)
display(Image(data=png))
print("done")
"""


def notebook(*cells: tuple[str, str]) -> dict[str, Any]:
    code = [
        {"cell_type": "code", "id": cid, "metadata": {}, "execution_count": None, "outputs": [],
         "source": source}
        for cid, source in cells
    ]  # fmt: skip
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return {"cells": code, "metadata": {"kernelspec": spec}, "nbformat": 4, "nbformat_minor": 5}


def v1_frame(channel: str, message: dict[str, Any]) -> bytes:
    """A message in the kernel websocket's v1 protocol (JupyterLab 4's): offsets, then the
    channel and the message's parts."""
    parts = [json.dumps(message[k]).encode() for k in ("header", "parent_header", "metadata",
                                                          "content")]  # fmt: skip
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(channel.encode()))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + channel.encode() + b"".join(parts)


def v1_parse(frame: bytes) -> dict[str, Any]:
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    header, parent = json.loads(parts[0]), json.loads(parts[1])
    return {"msg_type": header["msg_type"], "parent_header": parent,
            "content": json.loads(parts[3])}  # fmt: skip


class Browser:
    """What JupyterLab does for an open notebook: its session, and the kernel's websocket."""

    def __init__(self, port: int, token: str, path: str, v1: bool = True) -> None:
        self.port, self.token, self.v1 = port, token, v1
        status, session = api(port, "/api/sessions", token, method="POST", body={
            "path": path, "type": "notebook", "name": "", "kernel": {"name": "python3"},
        })  # fmt: skip
        assert status == 201, session
        self.kernel = session["kernel"]["id"]
        self.session = uuid.uuid4().hex
        self.connect()

    def connect(self) -> None:
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{self.kernel}/channels"
            f"?session_id={self.session}",
            header=[f"Authorization: token {self.token}"], timeout=60,
            subprotocols=["v1.kernel.websocket.jupyter.org"] if self.v1 else None,
        )  # fmt: skip

    def execute(self, cell_id: str, code: str) -> str:
        msg_id = uuid.uuid4().hex
        message = {
            "header": {"msg_id": msg_id, "username": "lab", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "channel": "shell",
            # As JupyterLab tags each execution with its cell.
            "metadata": {"cellId": cell_id, "deletedCells": [], "recordTiming": False},
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }  # fmt: skip
        if self.v1:
            self.ws.send_binary(v1_frame("shell", message))
        else:
            self.ws.send(json.dumps(message))
        return msg_id

    def next_of(self, msg_id: str) -> dict[str, Any]:
        while True:
            raw = self.ws.recv()
            message = v1_parse(raw) if isinstance(raw, bytes) else json.loads(raw)
            if message.get("parent_header", {}).get("msg_id") == msg_id:
                return message

    def until_idle(self, msg_id: str) -> None:
        while True:
            message = self.next_of(msg_id)
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return


def lab(project: Path) -> tuple[int, str]:
    status = json.loads(run_rjn("status", "--json", cwd=project).stdout)
    found = re.search(r"127\.0\.0\.1:(\d+)/lab\?token=(.+)$", status["tokened_url"])
    assert found, status
    return int(found.group(1)), found.group(2)


def cell(path: Path, cell_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in json.loads(path.read_text())["cells"]
                                 if c["id"] == cell_id)  # fmt: skip
    return found


def test_a_cell_that_ran_on_after_the_browser_left_keeps_its_output(
    opened_project: Callable[..., Path], short_tmp: Path
) -> None:
    nb = notebook(("first", "1 + 1"), ("away-cell", AWAY_CELL))
    project = opened_project(
        "awayout", before=lambda root: (root / "away.ipynb").write_text(json.dumps(nb))
    )
    there = short_tmp / "remote" / "awayout" / "away.ipynb"
    browser = Browser(*lab(project), "away.ipynb")
    msg_id = browser.execute("away-cell", AWAY_CELL)
    while browser.next_of(msg_id)["msg_type"] != "stream":
        pass  # running: the first step is printed
    browser.ws.close()  # the laptop's lid closes

    wait_for(lambda: cell(there, "away-cell")["outputs"], timeout=60, what="the kept output")
    kept = cell(there, "away-cell")
    # A notebook file keeps multi-line text as a list of lines.
    texts = "".join("".join(o["text"]) for o in kept["outputs"] if o["output_type"] == "stream")
    assert texts == "step 0\nstep 1\nstep 2\ndone\n"
    [image] = [o for o in kept["outputs"] if o["output_type"] == "display_data"]
    assert base64.b64decode("".join(image["data"]["image/png"])) == PNG
    assert kept["execution_count"] == 1
    assert cell(there, "first")["outputs"] == []  # nothing else touched

    synced = run_rjn("sync", cwd=project)
    assert synced.returncode == 0, synced.stderr
    assert cell(project / "away.ipynb", "away-cell")["outputs"] == kept["outputs"]
    assert (project / "results" / "away.png").read_bytes() == PNG
    told = run_rjn("status", cwd=project)
    assert "1 cell finished in away.ipynb while you were away" in told.stdout, told.stdout
    again = run_rjn("status", cwd=project)
    assert "while you were away" not in again.stdout  # told once


def test_with_a_browser_attached_the_notebook_is_left_to_it(
    opened_project: Callable[..., Path], short_tmp: Path
) -> None:
    nb = notebook(("watched", "print('seen')"))
    project = opened_project(
        "awaywatched", before=lambda root: (root / "watched.ipynb").write_text(json.dumps(nb))
    )
    there = short_tmp / "remote" / "awaywatched" / "watched.ipynb"
    before = there.read_bytes()
    browser = Browser(*lab(project), "watched.ipynb", v1=False)
    browser.until_idle(browser.execute("watched", "print('seen')"))
    browser.ws.close()
    assert there.read_bytes() == before  # the browser saves it, as it always does
    assert "while you were away" not in run_rjn("status", cwd=project).stdout
