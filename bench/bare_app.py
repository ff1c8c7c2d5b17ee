"""The yardstick for `api.read_throughput_ratio`: a bare Litestar app answering
`GET /api/devboxes/{id}` with fixed bytes (the service's own answer), served by uvicorn with
the service's server settings. Run: `python -m bench.bare_app PORT BODY_FILE`."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from litestar import Litestar, MediaType, Response, get


def bare_app(body: bytes) -> Litestar:
    @get("/api/devboxes/{devbox_id:str}")
    async def devbox(devbox_id: str) -> Response[bytes]:
        return Response(body, media_type=MediaType.JSON)

    return Litestar(route_handlers=[devbox], logging_config=None, debug=False)


if __name__ == "__main__":
    port, body_file = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(
        bare_app(body_file.read_bytes()),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
    )
