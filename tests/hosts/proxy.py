"""A CONNECT proxy on the test link: the namespaced host reaches the package index and nothing else.

Usage: proxy.py ADDRESS PORT
"""

from __future__ import annotations

import asyncio
import sys

ALLOWED = {"pypi.org", "files.pythonhosted.org"}


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = (await reader.readline()).decode(errors="replace").split()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    target = request[1] if len(request) > 1 and request[0] == "CONNECT" else ""
    host, _, port = target.rpartition(":")
    if host not in ALLOWED or port != "443":
        writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        writer.close()
        return
    try:
        up_reader, up_writer = await asyncio.open_connection(host, 443)
    except OSError:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main() -> None:
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
