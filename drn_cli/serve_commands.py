"""`drn serve`: run the HTTP service under uvicorn. Flags override the DRN_SERVE_* environment (serving.settings);
FastAPI, torch and MLflow are imported only when the command runs, so `drn --help` stays fast."""
from __future__ import annotations

import argparse
import logging


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from serving.app import create_app
    from serving.settings import ServeSettings

    settings = ServeSettings.from_env(host=args.host, port=args.port, follow=args.follow, poll_s=args.poll_s,
                                      registry_poll_s=args.registry_poll_s,
                                      max_candidates=args.max_candidates, feedback_window_s=args.feedback_window_s)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # No access log: every request is already counted and timed in /metrics, and a log line per request costs
    # a noticeable share of a /recommend's CPU time. asyncio's own event loop, not uvloop: under steady load from 8
    # keep-alive clients, uvloop settled into a cycle that left the same 2 connections waiting a whole extra round
    # every time (twice the others' latency, for a quarter of all requests: that was the p99, in a diagnostic run
    # with uvloop installed), where asyncio's loop served all 8 alike (serving_bench's "spread" column shows it now).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                access_log=False, loop="asyncio")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="the HTTP recommendation service (see serving/README.md)")
    serve.add_argument("--host", help="bind address (DRN_SERVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (DRN_SERVE_PORT, default 8000)")
    serve.add_argument("--follow", help="'stage' (Production) or 'alias' (champion) (DRN_SERVE_FOLLOW)")
    serve.add_argument("--poll-s", type=float,
                       help="seconds between looks at the open exploration round (DRN_SERVE_POLL_S, default 2)")
    serve.add_argument("--registry-poll-s", type=float, help="seconds between registry looks when no round moved "
                       "(DRN_SERVE_REGISTRY_POLL_S, default 10)")
    serve.add_argument("--max-candidates", type=int, help="per request (DRN_SERVE_MAX_CANDIDATES, default 500)")
    serve.add_argument("--feedback-window-s", type=float, help="seconds after its impression that a click or return "
                                                              "is accepted (DRN_SERVE_FEEDBACK_WINDOW_S, a week)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(handler=cmd_serve)
