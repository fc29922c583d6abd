"""Outputs of cells that ran while no browser was attached, kept and written into the notebook.

A cell keeps running in its kernel when the browser closes (the laptop sleeps, the link goes),
but what it prints or plots reaches the notebook only through a browser: without one it is
lost. This is a Jupyter server extension (jupyter_server 2: JupyterLab 4, Notebook 7) that
rjn's server start loads from a copy beside the project's records (server.py). It notes each
execute request a browser sends (JupyterLab tags it with the cell's id), listens to the
kernel's output itself, and when the cell finishes (and every FLUSH_EVERY seconds of a long
one) while no client is connected to that kernel, writes the cell's outputs into the notebook
file through the server's own contents manager, only over the version it read. With a client
connected it writes nothing: the notebook is the browser's, which saves as it always does.
What it wrote is logged in .rjn/away.json, for `rjn open` and `rjn status` to tell.
On SIGUSR1 (a SLURM job's time limit is near: slurm.py asks for it) it writes what every
running cell has output so far at once, before the node goes.

It runs inside the Jupyter server, never in the helper (which imports nothing of it).
"""

import asyncio
import json
import os
import signal
import time

from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.utils import ensure_async

# A long cell's outputs so far reach the file this often while nobody watches.
FLUSH_EVERY = 30.0
# The log keeps this many entries, newest last.
LOG_KEPT = 200
OUTPUTS = ("stream", "display_data", "execute_result", "error")

_keeper = None


def _jupyter_server_extension_points():
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp):
    global _keeper
    _keeper = Keeper(serverapp)
    serverapp.log.info("rjn: outputs of cells that run while no browser is attached are kept")
    loop = serverapp.io_loop.asyncio_loop

    def time_is_near(signum, frame):
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_keeper.write_all()))

    try:
        signal.signal(signal.SIGUSR1, time_is_near)
    except ValueError:  # not the main thread (an embedding server): no early write then
        serverapp.log.info("rjn: SIGUSR1 not taken (not the main thread)")


class KeepingConnection(ZMQChannelsWebsocketConnection):
    """The server's kernel websocket, telling the keeper what a browser asked for."""

    def connect(self):
        if _keeper is not None:
            _keeper.listen(self.kernel_id)
        return super().connect()

    def handle_incoming_message(self, incoming_msg):
        if _keeper is not None:
            try:
                _keeper.requested(self.kernel_id, *self._request(incoming_msg))
            except Exception:  # never in the way of the browser's own message
                self.log.debug("rjn: an incoming message was not understood", exc_info=True)
        super().handle_incoming_message(incoming_msg)

    def _request(self, incoming_msg):
        """(channel, header, metadata) of a message from the browser, either protocol."""
        if self.subprotocol == "v1.kernel.websocket.jupyter.org":
            channel, parts = deserialize_msg_from_ws_v1(incoming_msg)
            return channel, json.loads(parts[0]), json.loads(parts[2])
        message = json.loads(incoming_msg) if isinstance(incoming_msg, str) else {}
        return message.get("channel"), message.get("header"), message.get("metadata")


class Run:
    """One execute request of a cell, and what it has output so far."""

    def __init__(self, kernel_id, cell_id):
        self.kernel_id, self.cell_id = kernel_id, cell_id
        self.outputs, self.count = [], None
        self.clear_next = False  # clear_output(wait=True): clear when the next output comes
        self.away = False  # some of it happened while no client was connected
        self.changed = False


class Keeper:
    """Every kernel's output, followed for the requests browsers made."""

    def __init__(self, serverapp):
        self.app = serverapp
        self.log = serverapp.log
        self.runs = {}  # msg_id of the request -> Run
        self.streams = {}  # kernel_id -> its IOPub stream
        self.record = os.path.join(serverapp.root_dir, ".rjn", "away.json")
        self._flusher = None
        self.writing = set()

    def listen(self, kernel_id):
        """Follow the kernel's output (from a browser's first connection on: a subscription
        made at the request itself could miss its first messages)."""
        stream = self.streams.get(kernel_id)
        if stream is not None and not stream.closed():
            return
        kernel = self.app.kernel_manager.get_kernel(kernel_id)
        stream = kernel.connect_iopub()
        stream.on_recv(lambda parts: self._output(kernel_id, kernel.session, parts))
        self.streams[kernel_id] = stream
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_long_runs())

    def requested(self, kernel_id, channel, header, metadata):
        if channel != "shell" or not isinstance(header, dict) or not isinstance(metadata, dict):
            return
        cell_id = metadata.get("cellId")
        if header.get("msg_type") == "execute_request" and isinstance(cell_id, str):
            self.listen(kernel_id)
            self.runs[header["msg_id"]] = Run(kernel_id, cell_id)

    def attached(self, kernel_id):
        """Whether any client (a browser tab) is connected to the kernel now."""
        try:
            return self.app.kernel_manager.kernel_model(kernel_id).get("connections", 0) > 0
        except Exception:
            return False

    def _output(self, kernel_id, session, parts):
        try:
            _, parts = session.feed_identities(parts)
            message = session.deserialize(parts)
        except Exception:
            return
        run = self.runs.get(message["parent_header"].get("msg_id"))
        if run is None:
            return
        kind, content = message["header"]["msg_type"], message["content"]
        if not self.attached(kernel_id):
            run.away = True
        if kind == "execute_input":
            run.count = content.get("execution_count")
        elif kind == "clear_output":
            if content.get("wait"):
                run.clear_next = True
            else:
                run.outputs, run.changed = [], True
        elif kind in OUTPUTS:
            if run.clear_next:
                run.outputs, run.clear_next = [], False
            self._add(run, kind, content)
        elif kind == "status" and content.get("execution_state") == "idle":
            del self.runs[message["parent_header"]["msg_id"]]
            if run.away and not self.attached(kernel_id):
                # Held until done: the loop keeps only a weak reference to a task.
                task = asyncio.ensure_future(self._write(run, finished=True))
                self.writing.add(task)
                task.add_done_callback(self.writing.discard)

    def _add(self, run, kind, content):
        last = run.outputs[-1] if run.outputs else None
        if kind == "stream" and last and last["output_type"] == "stream" and (
            last["name"] == content.get("name")
        ):
            last["text"] += content.get("text", "")  # one stream output, as the browser shows it
        elif kind == "stream":
            text = content.get("text", "")
            run.outputs.append({"output_type": "stream", "name": content.get("name"), "text": text})
        elif kind == "error":
            run.outputs.append({"output_type": "error", "ename": content.get("ename"),
                                "evalue": content.get("evalue"),
                                "traceback": content.get("traceback", [])})  # fmt: skip
        else:
            output = {"output_type": kind, "data": content.get("data", {}),
                      "metadata": content.get("metadata", {})}  # fmt: skip
            if kind == "execute_result":
                output["execution_count"] = content.get("execution_count")
                run.count = content.get("execution_count", run.count)
            run.outputs.append(output)
        run.changed = True

    async def _flush_long_runs(self):
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            for run in list(self.runs.values()):
                if run.away and run.changed and not self.attached(run.kernel_id):
                    await self._write(run, finished=False)

    async def write_all(self):
        """What every running cell output so far, into its notebook now (the job's end is
        near); where a browser is attached, the notebook is the browser's to save."""
        self.log.info("rjn: SIGUSR1: the job's time limit is near; writing running cells' outputs")
        for run in list(self.runs.values()):
            if run.changed and not self.attached(run.kernel_id):
                await self._write(run, finished=False)

    async def _write(self, run, finished):
        """The run's outputs into its cell of the notebook its kernel's session has open,
        through the contents manager, only over the version read (compare and swap)."""
        path = await self._path(run.kernel_id)
        if path is None:
            return
        contents = self.app.contents_manager
        try:
            model = await ensure_async(contents.get(path, content=True, type="notebook"))
            notebook = model["content"]
            cell = next((c for c in notebook.cells if c.get("id") == run.cell_id), None)
            placed = cell is not None and cell.cell_type == "code"
            if placed:
                from nbformat import from_dict

                cell.outputs = [from_dict(output) for output in run.outputs]
                cell.execution_count = run.count
                now = await ensure_async(contents.get(path, content=False))
                if now["last_modified"] != model["last_modified"] or self.attached(run.kernel_id):
                    return  # changed meanwhile, or a browser came: theirs; next time, again
                await ensure_async(
                    contents.save({"type": "notebook", "format": "json", "content": notebook}, path)
                )
                run.changed = False
            if finished:
                self._log(path, run, placed)
        except Exception:
            self.log.warning("rjn: no outputs written into %s", path, exc_info=True)

    async def _path(self, kernel_id):
        sessions = await ensure_async(self.app.session_manager.list_sessions())
        for session in sessions:
            if (session.get("kernel") or {}).get("id") == kernel_id and session.get("type") in (
                "notebook", None
            ):
                return session.get("path")
        return None

    def _log(self, path, run, placed):
        try:
            with open(self.record) as handle:
                entries = json.load(handle).get("cells", [])
        except (OSError, ValueError, AttributeError):
            entries = []
        entries.append({"path": path, "cell": run.cell_id, "finished": time.time(),
                        "placed": placed})  # fmt: skip
        os.makedirs(os.path.dirname(self.record), mode=0o700, exist_ok=True)
        staged = "%s.%d" % (self.record, os.getpid())
        with open(staged, "w") as handle:
            json.dump({"cells": entries[-LOG_KEPT:]}, handle)
        os.replace(staged, self.record)
