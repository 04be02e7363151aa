"""End to end, the way a user runs it: `drn demo --keep-up` as a subprocess (Prefect server, MLflow server, the
flow deployments, serving, the simulated world's HTTP traffic on a compressed clock), then a rollback by stage
change through the MLflow server that serving follows and that holds, the browser journeys in the real UIs
(headless Chromium), then Ctrl-C, which must stop every process it started. And `drn up --data DIR`. Under
`pytest --stores=postgres` the stack keeps its three stores in fresh PostgreSQL databases (its --mlflow-uri,
--logstore-url and --prefect-database-url flags)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack.processes import free_port
from stack.settings import StackSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

HOURS, SPEED, USERS = 4, 240, 120  # 4 world hours in 60 s of traffic; a small world trains its first model fast
SUMMARY_TIMEOUT_S = 330  # start (~1-2 min on 2 busy cores) + traffic + summary
FOLLOW_TIMEOUT_S = 15  # serving polls the registry every second
MAJOR_PERIOD_S = 60 * 60 / SPEED  # T_R (60 world minutes) on the demo's clock
HOLD_TIMEOUT_S = 60  # the next update run records the stage change and holds promotion
STOP_TIMEOUT_S = 60


def wait_for(check, timeout_s: float, what: str, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert process.poll() is None, \
            f"drn demo exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(1.0)
    raise AssertionError(f"no {what} after {timeout_s} s:\n{log.read_text()[-3000:]}")


def served_version(api: str) -> str | None:
    try:
        return httpx.get(f"{api}/model", timeout=5).json().get("version")
    except httpx.HTTPError:
        return None


def held_promotion(api: str) -> dict | None:
    """/model's `promotion` while a rollback holds it, else None."""
    promotion = httpx.get(f"{api}/model", timeout=5).json()["promotion"]
    return promotion if promotion.get("held") else None


def free_stack(home: Path) -> StackSettings:
    """A stack on free loopback ports under `home`; its addresses are the StackSettings' own."""
    return StackSettings(home, prefect_port=free_port(), mlflow_port=free_port(), api_port=free_port())


def stack_flags(stack: StackSettings) -> list[str]:
    return ["--home", str(stack.home), "--prefect-port", str(stack.prefect_port), "--mlflow-port",
            str(stack.mlflow_port), "--api-port", str(stack.api_port)]


def start_drn(args: list[str], log: Path) -> subprocess.Popen:
    """`drn ARGS` as a user starts it: none of this process's DRN / Prefect / MLflow settings, output to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRN_", "PREFECT_", "MLFLOW_"))}
    with open(log, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "drn_cli.main", *args], stdout=sink, stderr=subprocess.STDOUT,
                                env=env)


@dataclass
class Demo:
    process: subprocess.Popen
    log: Path
    stack: StackSettings
    summary: dict

    def wait_for(self, check, timeout_s: float, what: str):
        return wait_for(check, timeout_s, what, self.process, self.log)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, store_urls, request):
    """One `drn demo --keep-up` for the module's tests, in order: the demo's summary and a stage rollback by API,
    the browser journeys (tests/browser.py), then Ctrl-C."""
    tmp_path = tmp_path_factory.mktemp("demo")
    out, log = tmp_path / "out", tmp_path / "demo.log"
    stack = free_stack(out / "home")
    process = start_drn(["demo", "--out", str(out), "--hours", str(HOURS), "--speed", str(SPEED), "--users",
                         str(USERS), "--keep-up", *stack_flags(stack), *store_urls.stack_flags(request)], log)
    try:
        summary_file = out / "summary.json"
        wait_for(lambda: summary_file.is_file() and "mlflow_run" in summary_file.read_text(), SUMMARY_TIMEOUT_S,
                 "summary", process, log)
        yield Demo(process, log, stack, json.loads(summary_file.read_text()))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(STOP_TIMEOUT_S)


def test_demo_serves_learns_and_a_stage_rollback_holds(demo):
    summary = demo.summary
    traffic = summary["traffic"]
    assert traffic["failed_requests"] == 0, traffic["errors"]
    assert traffic["impressions"] > 50 and traffic["clicks"] > 0
    assert [row["hour"] for row in summary["per_hour"]] == list(range(HOURS))
    # every served list measured by the world's click model against the best list of its candidates
    assert all(0.0 < row["oracle_share"] <= 1.0 for row in summary["per_hour"]), summary["per_hour"]
    assert 0.0 < summary["oracle_share_last_hours"] <= 1.0
    assert summary["versions_registered_by_kind"].get("offline") == 1
    assert summary["flow_runs"]["minor-update"].get("Completed", 0) >= 1
    assert not any(states.get("Cancelled") for states in summary["flow_runs"].values()), summary["flow_runs"]
    assert Path(summary["plot"]).is_file()
    assert set(json.loads(demo.stack.pid_file.read_text())) == {"prefect-server", "mlflow-server", "flows", "serving"}

    # Roll back (or forward) by stage, as an engineer does in the MLflow UI; serving follows.
    from mlflow import MlflowClient
    client = MlflowClient(demo.stack.mlflow_url)
    served = served_version(demo.stack.api_url)
    others = [v["version"] for v in summary["versions"] if v["version"] != served]
    assert others, f"only v{served} was registered: nothing to change the stage to"
    client.transition_model_version_stage("drn", others[0], "Production", archive_existing_versions=True)
    demo.wait_for(lambda: served_version(demo.stack.api_url) == others[0], FOLLOW_TIMEOUT_S, f"serving v{others[0]}")
    # the rollback holds: the next update run records it, /model says so, and the schedule does not overrule it
    promotion = demo.wait_for(lambda: held_promotion(demo.stack.api_url), HOLD_TIMEOUT_S, "promotion held")
    assert promotion["by"] == "mlflow-ui" and f"v{others[0]}" in promotion["why"]
    time.sleep(2 * MAJOR_PERIOD_S)
    assert served_version(demo.stack.api_url) == others[0]


def test_browser_journeys_pause_a_schedule_read_a_version_roll_back_by_stage(demo, browser):
    from browser import mlflow_rollback_by_stage, prefect_pause_and_resume, read_version_page
    assert prefect_pause_and_resume(browser, demo.stack.prefect_ui, "minor-update/drn") == (False, True)  # off, on
    versions = {v["version"]: v for v in demo.summary["versions"]}
    child = next(v for v in versions.values() if v["kind"] == "major")  # minor versions carry round counts, no AUC
    page = read_version_page(browser, demo.stack.mlflow_url, child["version"])
    assert f"parent\n{child['parent']}" in page and f"kind\n{child['kind']}" in page
    assert "metric.auc" in page and "Inputs (1)" in page  # its metrics, and the MLmodel's signature
    served = served_version(demo.stack.api_url)
    target = next(v for v in versions if v != served)
    clicks, clicked_at = mlflow_rollback_by_stage(browser, demo.stack.mlflow_url, target)
    demo.wait_for(lambda: served_version(demo.stack.api_url) == target, FOLLOW_TIMEOUT_S, f"serving v{target}")
    print(f"\nUI rollback to v{target}: {clicks} clicks, served {time.monotonic() - clicked_at:.2f} s after OK")
    demo.wait_for(lambda: (held_promotion(demo.stack.api_url) or {}).get("why", "").endswith(f"v{target} by hand"),
                  HOLD_TIMEOUT_S, "promotion held after the UI rollback")
    time.sleep(2 * MAJOR_PERIOD_S)
    assert served_version(demo.stack.api_url) == target


def test_ctrl_c_stops_every_process_the_demo_started(demo):
    pids = json.loads(demo.stack.pid_file.read_text())
    demo.process.send_signal(signal.SIGINT)
    demo.process.wait(STOP_TIMEOUT_S)
    assert not demo.stack.pid_file.exists()
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_up_with_data_trains_the_first_model_on_the_users_mind_folder(tmp_path, store_urls, request):
    """`drn up --data DIR`: the first version is trained on the user's MIND folder, not on the simulated world."""
    from drn.mind import load_dataset
    logs = tmp_path / "my-mind-logs"
    subprocess.run([sys.executable, "-m", "drn_cli.main", "world", "generate", "--out", str(logs), "--days", "2",
                    "--users", "60", "--seed", "7"], check=True, capture_output=True, timeout=120)
    stack, log = free_stack(tmp_path / "home"), tmp_path / "up.log"
    up = start_drn(["up", "--data", str(logs), *stack_flags(stack), *store_urls.stack_flags(request)], log)
    try:
        api = stack.api_url
        wait_for(lambda: served_version(api) == "1", SUMMARY_TIMEOUT_S, "v1 served", up, log)
        from mlflow import MlflowClient
        client = MlflowClient(stack.mlflow_url)
        run = client.get_run(client.get_model_version("drn", "1").run_id)
        assert run.data.params["data_dir"] == str(logs.resolve())
        assert "generating" not in log.read_text()  # no simulated world was generated for it
        data = load_dataset(logs)
        user, news = data.impressions[-1].user, sorted(data.news)[:5]
        reply = httpx.post(f"{api}/recommend", json={"user": user, "candidates": [{"news_id": n} for n in news]},
                           timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model_version"] == "1"
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(STOP_TIMEOUT_S)


def test_up_refuses_a_folder_that_is_not_mind_before_starting_anything(tmp_path):
    from drn_cli.main import main
    assert main(["up", "--data", str(tmp_path), *stack_flags(free_stack(tmp_path / "home"))]) == 2
    assert not (tmp_path / "home").exists()
