"""An OTLP/HTTP receiver that accepts and drops every export: the far end of tracing when its
overhead is measured (the service does all the work of tracing, no collector's CPU counts).

    .venv/bin/python bench/otlp_sink.py --port 4318 &
    .venv/bin/python bench/bench.py --only backlog \\
        --set OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def _accept(request: web.Request) -> web.Response:
    body = await request.read()
    request.app["bytes"] += len(body)
    request.app["exports"] += 1
    return web.Response(status=200, content_type="application/x-protobuf")


async def _stats(request: web.Request) -> web.Response:
    return web.json_response({"exports": request.app["exports"], "bytes": request.app["bytes"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["bytes"] = app["exports"] = 0
    app.router.add_post("/v1/traces", _accept)
    app.router.add_get("/stats", _stats)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
