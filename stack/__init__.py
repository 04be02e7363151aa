"""The whole pipeline on one machine: `drn up` / `drn down` start and stop the real parts (Prefect server, MLflow
server, flow deployments, serving) as subprocesses; `drn demo` adds a simulated world that sends them HTTP traffic.

This package talks to the parts over HTTP and process ids only; it imports neither `flows` nor `serving`, and
nothing heavy (Prefect, MLflow, torch) at import time, so `drn --help` stays fast.
"""
