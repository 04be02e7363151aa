"""The framework floor of POST /recommend: a bare FastAPI app under the same uvicorn settings as `drn serve`,
parsing the same body into the same schema (serving.schemas.RecommendRequest) and answering the same response
shape, with no features, scoring or logging. What /recommend costs above it is the project's own work.

    .venv/bin/python benchmarks/serving_floor.py --port 8766   (benchmarks/serving_bench.py starts it by itself)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.schemas import DEFAULT_K, RecommendRequest, RecommendResponse  # noqa: E402


def floor_app() -> FastAPI:
    app = FastAPI()

    @app.post("/recommend")
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """The first k candidates as given: the request and response work of the real route, nothing else."""
        items = [c["news_id"] for c in body["candidates"][: body.get("k", DEFAULT_K)]]
        return RecommendResponse(impression_id="floor", items=items, model_version="floor", source="floor",
                                 round_id=None, time=time.time())

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"source": "floor"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8766)
    args = ap.parse_args()
    # as drn_cli/serve_commands.py runs the service
    uvicorn.run(floor_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False, loop="asyncio")


if __name__ == "__main__":
    main()
