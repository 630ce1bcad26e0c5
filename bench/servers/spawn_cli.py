"""Baseline: the process model, spawning the native wasmtime CLI for every request (CGI)."""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wasmtime", required=True, help="path of the native wasmtime CLI")
    parser.add_argument("--module", required=True)
    args = parser.parse_args()

    async def run(_request: web.Request) -> web.Response:
        process = await asyncio.create_subprocess_exec(
            args.wasmtime,
            "run",
            args.module,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        stdout, _ = await process.communicate()
        status = 200 if process.returncode == 0 else 500
        return web.Response(body=stdout, status=status, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", run)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
