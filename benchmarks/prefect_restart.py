"""The Prefect server restarted while `drn flows serve` runs scheduled flows (issue 14, item 3), bounded in time.

tests/test_faults.py checks what the server keeps and schedules across a restart; this adds the runner executing
the runs: a real `prefect server start` (infra/start-prefect-server.sh) on a SQLite file under a fresh DRN_HOME,
`drn flows serve` with minor-update every --minor-every minutes and major-update paused, then the server stopped
(SIGTERM) after --before seconds and started again on the same file, and --after seconds more. Then every flow run
is read back: what must hold is that the schedules and the paused flag are the same after the restart, no
(deployment, slot) has two flow runs, and no flow run was started twice (Prefect's `run_count` <= 1). The DRN_HOME
has no model: each minor update ends at once ("nothing promoted"), so the runs measure the orchestration only.

    .venv/bin/python benchmarks/prefect_restart.py --out out/prefect_restart.json

Exits 1 when something did not hold. Prints a JSON summary and one Markdown row.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stack import processes  # noqa: E402
from stack.processes import Part, free_port  # noqa: E402
from stack.settings import StackSettings  # noqa: E402
from stack.up import drn_argv, part_env, prefect_server  # noqa: E402

START_TIMEOUT_S = 180.0


def wait(check, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout} s")
        time.sleep(0.5)


def deployments(api: str) -> dict[str, dict]:
    found = {}
    for name in ("minor-update/drn", "major-update/drn", "offline-training/drn", "rollback/drn", "resume/drn"):
        d = httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
        found[name] = {"id": d["id"], "paused": d["paused"],
                       "schedules": sorted((s["schedule"].get("interval"), s["active"]) for s in d["schedules"])}
    return found


def flow_runs(api: str) -> list[dict]:
    runs, offset = [], 0
    while True:
        page = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200, "offset": offset}, timeout=30).json()
        runs += page
        if len(page) < 200:
            return runs
        offset += 200


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--minor-every", type=float, default=0.25, help="minutes between minor-update slots")
    ap.add_argument("--before", type=float, default=60.0, help="seconds of runs before the restart")
    ap.add_argument("--after", type=float, default=60.0, help="seconds of runs after the server is back")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="drn-prefect-restart-"))
    settings = StackSettings(home, prefect_port=free_port(), mlflow_port=free_port(), api_port=free_port())
    api = settings.prefect_api
    server_part = prefect_server(settings)
    pids: dict[str, int] = {}

    def start_server() -> None:
        pids["prefect-server"] = processes.start(server_part, settings.log_dir).pid
        wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, "Prefect server")

    try:
        start_server()
        flows = processes.start(Part("flows", drn_argv("flows", "serve", "--minor-every", repr(args.minor_every),
                                                       "--major-every", "60"),
                                     {**part_env(settings), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}), settings.log_dir)
        pids["flows"] = flows.pid
        wait(lambda: httpx.get(f"{api}/deployments/name/major-update/drn", timeout=5).status_code == 200,
             "deployments served")
        major = deployments(api)["major-update/drn"]["id"]
        httpx.patch(f"{api}/deployments/{major}", json={"paused": True}, timeout=10).raise_for_status()
        time.sleep(args.before)
        before = deployments(api)
        runs_before = {r["id"]: r for r in flow_runs(api)}
        processes.stop_groups({"prefect-server": pids.pop("prefect-server")}, grace_s=15)
        stopped = time.monotonic()
        start_server()
        down_s = time.monotonic() - stopped
        time.sleep(args.after)
        after = deployments(api)
        runs = flow_runs(api)
        runner_alive = flows.poll() is None
    finally:
        processes.stop_groups(pids, grace_s=15)
    names = {v["id"]: k for k, v in after.items()}
    slots = Counter((r["deployment_id"], r["expected_start_time"]) for r in runs if r["deployment_id"])
    twice = [r["name"] for r in runs if (r.get("run_count") or 0) > 1]
    states = Counter((names.get(r["deployment_id"], "-"), r["state_name"]) for r in runs)
    result = {
        "minor_every_min": args.minor_every, "server_down_s": down_s, "runner_alive_after": runner_alive,
        "deployments_same": before == after, "major_paused_after": after["major-update/drn"]["paused"],
        "flow_runs_before_restart": len(runs_before), "flow_runs": len(runs),
        "slots_with_two_runs": sum(1 for n in slots.values() if n > 1), "runs_started_twice": twice,
        "runs_before_kept": set(runs_before) <= {r["id"] for r in runs},
        "states": {f"{d} {s}": n for (d, s), n in sorted(states.items())},
        "major_runs": sum(1 for r in runs if r["deployment_id"] == after["major-update/drn"]["id"]
                          and r["state_type"] != "SCHEDULED"),
    }
    result["passed"] = (result["deployments_same"] and result["major_paused_after"]
                        and not result["slots_with_two_runs"] and not twice and result["runs_before_kept"] and result["major_runs"] == 0)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    completed = sum(n for (d, s), n in states.items() if d == "minor-update/drn" and s in ("Completed", "Skipped"))
    print(f"\n| minor every | server down | flow runs (before restart) | minor runs ended Completed / Skipped | "
          f"slots with two runs | runs started twice | deployments and paused flag same |\n| --- | --- | --- | --- | "
          f"--- | --- | --- |\n| {args.minor_every * 60:.0f} s | {down_s:.0f} s | {len(runs)} ({len(runs_before)}) | "
          f"{completed} | {result['slots_with_two_runs']} | {len(twice)} | {result['deployments_same']} |")
    print(f"passed: {result['passed']} (logs: {settings.log_dir})")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
