"""Baseline: the cheapest aiohttp handler, the ceiling of any Python front end on this machine."""

from __future__ import annotations

import argparse

from aiohttp import web

BODY = b"Hello from a bare aiohttp handler!\n"


async def hello(_request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", hello)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
