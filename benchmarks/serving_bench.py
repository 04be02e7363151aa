"""Speed of the HTTP service: /recommend with 50 candidates over real HTTP, and scoring alone in-process.

Starts `drn serve` in a subprocess on 127.0.0.1 against a fresh DRN_HOME holding one promoted DRN version of the
default size (NetworkConfig()) with an open exploration round, so every request computes features, runs two
forward passes (W and W~), interleaves and logs the impression. Then, for each concurrency, that many keep-alive
connections of one light asyncio client (raw HTTP/1.1, requests encoded in advance) send requests back to back;
throughput, p50 / p99 latency and the server process's CPU time per request are measured after a warm-up. Each
level is bounded by --requests and --seconds, and the levels are run --rounds times over; each figure is reported
per round and as the median over rounds, which the targets are checked on: p99 <= 20 ms at 8 clients, >= 500
requests/s at the best level. Side by side in the same run, alternating level by level with the service, the
framework floor (benchmarks/serving_floor.py: the same server stack parsing the same body, no work) answers the
same requests, and the service's throughput and p99 are reported as ratios to the floor's: the comparison that
holds across machines (targets: >= 0.6 of the floor's throughput at 8 clients, p99 <= 2x the floor's). The client
shares the machine's cores with the service. Before each round a fixed
pure-Python loop is timed: on this shared machine the same code ran up to 40-75% slower from one minute to the next,
and 3.5 times slower in one session than in another (serving/README.md), so read the CPU columns and that speed
before comparing latencies between runs.

    .venv/bin/python benchmarks/serving_bench.py --out out/serving_bench.json
    .venv/bin/python benchmarks/serving_bench.py --logstore-dir /dev/shm/drn-bench --out /tmp/serving_bench_shm.json

--logstore-dir puts the log store elsewhere (e.g. on tmpfs, where a commit costs no fsync) to separate the service's
own cost from the disk's: the log store commits every impression with synchronous=FULL before answering.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drn import lifecycle  # noqa: E402
from drn.bundle import bundle_of
from drn.exploration import explore_weights  # noqa: E402
from drn.logstore import NO_TEAM, ImpressionRecord, LogStore  # noqa: E402
from drn.mind import NewsItem  # noqa: E402
from drn.model import NetworkConfig, build_network, network_from_weights  # noqa: E402
from drn.model import set_threads  # noqa: E402
from drn.registry import Registry  # noqa: E402
from drn.scoring import StackedScorer  # noqa: E402
from serving.app import rebuild_feature_state  # noqa: E402

CANDIDATES = 50  # per request: the brief's size
USERS = 1000  # distinct users the clients draw from, so user state is neither empty nor one hot row
NEWS_POOL = 400  # candidates are drawn from this many items
PUBLISHED = 1_760_000_000.0  # publication times: fixed, so a repeated description is not news to the service
WARMUP = 50  # requests per level that are not measured (connection set-up, first allocations)
CONCURRENCY = (1, 8, 32)
HISTORY_S = 86400.0  # the seeded history spans the day before the run
TARGET_P99_MS_AT_8, TARGET_RPS = 20.0, 500.0
TARGET_FLOOR_SHARE_AT_8, TARGET_FLOOR_P99_RATIO_AT_8 = 0.6, 2.0  # against the framework floor, same run
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def _news(i: int) -> dict:
    return {"news_id": f"N{i}", "category": f"cat{i % 17}", "subcategory": f"sub{i % 60}", "provider": f"p{i % 9}",
            "entities": [f"E{i % 31}", f"E{i % 13}"], "published": PUBLISHED - 3600.0 * (i % 48)}


def _payload(rng: np.random.Generator) -> dict:
    ids = rng.choice(NEWS_POOL, size=CANDIDATES, replace=False)
    return {"user": f"U{int(rng.integers(USERS))}", "candidates": [_news(int(i)) for i in ids], "k": 10}


def scoring_time(bundle, logs_url: str, repeats: int) -> dict:
    """In-process, on the feature state the service rebuilds from the seeded log store: features for 50 candidates;
    W and W~ together in serving's stacked pass (drn.scoring); and, for comparison, each network's torch forward,
    and the advantage towers' whole first layer in the order the stacked pass multiplies (weight @ inputs) and the
    other way round (inputs @ weight)."""
    set_threads()
    rng = np.random.default_rng(0)
    with LogStore(logs_url) as logs:
        state, _, _ = rebuild_feature_state(logs)
    exploit = network_from_weights(bundle.config, bundle.weights)
    explore = network_from_weights(bundle.config, explore_weights(bundle.weights, 1, 0.1))
    stacked = StackedScorer([exploit, explore])
    now = time.time()
    timings: dict[str, list[float]] = {"features": [], "score_w_and_w_tilde_stacked": [], "score_w_torch": [],
                                       "score_w_tilde_torch": [], "first_layer_weight_at_inputs": [],
                                       "first_layer_inputs_at_weight": []}
    first_layer = stacked._action_first  # (W's and W~'s units, action inputs): the largest product, both ways round
    first_layer_t = np.ascontiguousarray(first_layer.T)
    vw = _vw_peer()
    if vw is not None:
        timings.update(vw_predict=[], vw_text_and_predict=[])
    active = []
    for i in range(repeats):
        payload = _payload(rng)
        ids = [c["news_id"] for c in payload["candidates"]]
        t0 = time.perf_counter()
        batch = state.features(payload["user"], ids, now + i * 1e-3)
        t1 = time.perf_counter()
        stacked.score(batch)
        t2 = time.perf_counter()
        exploit.score(batch)
        t3 = time.perf_counter()
        explore.score(batch)
        t4 = time.perf_counter()
        first_layer @ batch.action.T  # in the order StackedScorer multiplies (it sends only 34 of the 211 inputs)
        t5 = time.perf_counter()
        batch.action @ first_layer_t  # the same product the other way round
        t6 = time.perf_counter()
        state.record_impression(payload["user"], ids[:10], now + i * 1e-3)
        active.append(int(np.count_nonzero(batch.state)))
        seconds = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5]
        if vw is not None:  # VW reads text: its predict alone, and with the text made from the same features
            lines = vw.lines(batch)
            t7 = time.perf_counter()
            vw.predict(lines)
            t8 = time.perf_counter()
            vw.scores(batch)
            seconds += [t8 - t7, time.perf_counter() - t8]
        for name, s in zip(timings, seconds):
            timings[name].append(s * 1e3)
    medians = {f"{name}_ms_median": statistics.median(v) for name, v in timings.items()}
    if vw is not None:
        medians["stacked_over_vw_predict"] = (medians["score_w_and_w_tilde_stacked_ms_median"]
                                              / medians["vw_predict_ms_median"])
    return {**medians, "nonzero_state_inputs_median": statistics.median(active)}


def _vw_peer():
    """Vowpal Wabbit's squarecb on the same features (drn.peers), when the `.[peers]` extra is installed."""
    try:
        from drn.peers import VWPolicy
        return VWPolicy("vw-squarecb")
    except ImportError:
        return None


def _item(i: int) -> NewsItem:
    return NewsItem(**{k: (tuple(v) if k == "entities" else v) for k, v in _news(i).items()})


def seed_history(logs: LogStore, impressions: int, now: float, rng: np.random.Generator) -> int:
    """The last day's traffic, logged before the service starts (it rebuilds its feature state from the log store):
    every user has clicked before, so profiles, windows and per-item counts are as full as in steady operation, not
    the zeros of a fresh service. Returns the number of clicks logged."""
    records, clicks = [], []
    for i in range(impressions):
        at = now - HISTORY_S + HISTORY_S * i / impressions
        shown = tuple(f"N{j}" for j in rng.choice(NEWS_POOL, size=10, replace=False))
        records.append(ImpressionRecord(f"history-{i}", f"U{i % USERS}", at, shown, shown, (NO_TEAM,) * 10, "history"))
        clicks += [(f"history-{i}", news_id, at + 30.0) for news_id in shown[:int(rng.integers(0, 3))]]
    logs.log_impressions(records, [_item(i) for i in range(NEWS_POOL)])
    logs.log_clicks(clicks)
    return len(clicks)


def setup_home(home: Path, history: int) -> tuple[str, object, int]:
    """A registry with one promoted default-size version and an open round, and `history` logged impressions;
    returns (version, bundle, clicks logged)."""
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")
    bundle = bundle_of(build_network(NetworkConfig(), seed=0))
    version = registry.register(bundle, kind="offline", parent=None, data_window=None, params={}, metrics={})
    with LogStore(os.environ["DRN_LOGSTORE_URL"]) as logs:
        clicks = seed_history(logs, history, time.time() - 60.0, np.random.default_rng(1))
        lifecycle.promote(registry, logs, version, who="serving_bench", why="benchmark", now=time.time())
    return version, bundle, clicks


def follow_costs(home: Path, repeats: int = 10) -> dict:
    """What keeping up with the registry costs, in this process (which, like the service, has MLflow, SQLAlchemy,
    torch and FastAPI loaded): one look at the registry by stage and by alias (the version number, as serving asks
    it: `Registry.served_version` / `champion_version`), one look at the open round (ms, medians), and one full
    garbage collection of everything loaded (ms) - what `gc.freeze()` spares the service."""
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")

    def median_ms(call) -> float:
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            timings.append((time.perf_counter() - start) * 1e3)
        return statistics.median(timings)

    with LogStore(os.environ["DRN_LOGSTORE_URL"]) as logs:
        costs = {"registry_served_version_ms": median_ms(registry.served_version),
                 "registry_champion_version_ms": median_ms(registry.champion_version),
                 "open_round_ms": median_ms(logs.current_round)}
    start = time.perf_counter()
    gc.collect()
    return {**costs, "full_gc_ms": (time.perf_counter() - start) * 1e3, "gc_objects": len(gc.get_objects())}


def _request(payload: dict) -> bytes:
    """One POST /recommend, encoded once: the client should spend its CPU on sending, not on building requests."""
    body = json.dumps(payload).encode()
    head = (f"POST /recommend HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request on a keep-alive connection and read its whole response; returns the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))
    return int(head[9:12])


def python_loop_ms() -> float:
    """A fixed pure-Python loop (median of 5): the same code's time varied by 40% over one session on this shared
    machine, so every result carries the machine's speed at the time, to compare runs by."""
    def once() -> float:
        start, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i * i
        return (time.perf_counter() - start) * 1e3

    return statistics.median(once() for _ in range(5))


def cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time of the service's event-loop thread ("loop", the thread whose id is the process id)
    and of all its threads ("all"), from Linux /proc: the service's cost per request, which unlike latency does not
    depend on what else the machine's cores are busy with."""
    def thread_seconds(stat: Path) -> float:
        fields = stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return {"loop": thread_seconds(Path(f"/proc/{pid}/task/{pid}/stat")),
            "all": thread_seconds(Path(f"/proc/{pid}/stat"))}


async def level(port: int, clients: int, requests: int, seconds: float, seed: int, server_pid: int) -> dict:
    """`clients` concurrent keep-alive connections sending back to back until `requests` are measured or `seconds`
    pass. A raw HTTP/1.1 client on asyncio streams, not httpx: the client shares the machine's cores with the
    service, and httpx's per-request CPU (about as much as the service's own) would be measured as server time."""
    rng = np.random.default_rng(seed)
    requests_ = [_request(_payload(rng)) for _ in range(256)]
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    for i in range(WARMUP):
        await _exchange(*connections[i % clients], requests_[i % len(requests_)])
    latencies: list[list[float]] = [[] for _ in connections]  # per connection
    failures = sent = 0
    deadline = time.perf_counter() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mine: list[float]) -> None:
        nonlocal sent, failures
        while sent < requests and time.perf_counter() < deadline:
            request = requests_[sent % len(requests_)]
            sent += 1
            t = time.perf_counter()
            status = await _exchange(reader, writer, request)
            mine.append(time.perf_counter() - t)
            failures += status != 200

    start, cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    await asyncio.gather(*(worker(*connection, mine) for connection, mine in zip(connections, latencies)))
    elapsed, cpu_end = time.perf_counter() - start, cpu_seconds(server_pid)
    client_cpu = time.process_time() - client_cpu
    for _, writer in connections:
        writer.close()
    ms = np.concatenate([np.array(mine) for mine in latencies]) * 1e3
    medians = [float(np.median(mine)) * 1e3 for mine in latencies if mine]
    return {"clients": clients, "requests": len(ms), "failures": failures, "seconds": elapsed,
            "requests_per_s": len(ms) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "connection_p50_spread": max(medians) / min(medians),
            "server_cpu_ms_per_request": (cpu_end["all"] - cpu["all"]) * 1e3 / len(ms),
            "loop_thread_cpu_ms_per_request": (cpu_end["loop"] - cpu["loop"]) * 1e3 / len(ms),
            "client_cpu_ms_per_request": client_cpu * 1e3 / len(ms)}


def wait_ready(url: str, server: subprocess.Popen, source: str = "drn", timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {server.returncode}")
        try:
            health = httpx.get(f"{url}/healthz", timeout=2).json()
            if health["source"] == source:
                return health
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server at {url} did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="JSON results (its folder is made if missing)")
    ap.add_argument("--requests", type=int, default=3000, help="measured requests per concurrency level, at most")
    ap.add_argument("--seconds", type=float, default=20.0, help="time per concurrency level, at most")
    ap.add_argument("--rounds", type=int, default=3, help="times each level is run; medians are reported")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--history", type=int, default=20_000,
                    help="impressions of the day before, logged before the service starts (users with a past)")
    ap.add_argument("--logstore-dir", type=Path,
                    help="folder for the log store (default: inside the temporary DRN_HOME)")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)  # before the run, so that its minutes are not lost at the end

    home = Path(tempfile.mkdtemp(prefix="drn-serving-bench-"))
    logdir = args.logstore_dir or home
    logdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(DRN_HOME=str(home), DRN_LOGSTORE_URL=f"sqlite:///{(logdir / 'bench-logs.db').resolve()}",
                      DRN_SERVE_SECRET="serving-bench-secret-0123456789")
    version, bundle, clicks = setup_home(home, args.history)
    scoring = scoring_time(bundle, os.environ["DRN_LOGSTORE_URL"], repeats=500)
    follow = follow_costs(home)

    url = f"http://127.0.0.1:{args.port}"
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-m", "drn_cli.main", "serve", "--port", str(args.port),
                               "--log-level", "warning"], cwd=root)
    floor_port = args.port + 1
    floor = subprocess.Popen([sys.executable, str(root / "benchmarks" / "serving_floor.py"), "--port", str(floor_port)],
                             cwd=root)
    try:
        wait_ready(url, server)
        wait_ready(f"http://127.0.0.1:{floor_port}", floor, source="floor")
        # This client process holds everything setup loaded (MLflow, torch: half a million objects); one full
        # collection of them stopped it for about 250 ms, and every request in flight then seemed to take that long.
        gc.collect()
        gc.freeze()
        runs, floor_runs = [], []  # every level of every round, in the order run: the service's, then the floor's
        for round_ in range(args.rounds):
            speed = python_loop_ms()
            for c in CONCURRENCY:  # the same requests (same seed) to the service, then at once to the floor
                for port, pid, into in ((args.port, server.pid, runs), (floor_port, floor.pid, floor_runs)):
                    into.append({"round": round_ + 1, "python_loop_ms": speed,
                                 **asyncio.run(level(port, c, args.requests, args.seconds, seed=1000 * round_ + c,
                                                     server_pid=pid))})
        metrics_text = httpx.get(f"{url}/metrics").text
    finally:
        for process in (server, floor):
            process.terminate()
            process.wait(30)

    levels = [_median_level([r for r in runs if r["clients"] == c]) for c in CONCURRENCY]
    floor_levels = [_median_level([r for r in floor_runs if r["clients"] == c]) for c in CONCURRENCY]
    against_floor = [floor_ratios(service, base, [r for r in runs if r["clients"] == service["clients"]],
                                  [r for r in floor_runs if r["clients"] == service["clients"]])
                     for service, base in zip(levels, floor_levels)]
    floor8 = next(r for r in against_floor if r["clients"] == 8)
    at8 = next(r for r in levels if r["clients"] == 8)
    best = max(r["requests_per_s"] for r in levels)
    result = {"version": version, "candidates": CANDIDATES, "network": NetworkConfig().to_dict(),
              "log_store": os.environ["DRN_LOGSTORE_URL"], "history": {"impressions": args.history, "clicks": clicks},
              "cpus": os.cpu_count(), "scoring": scoring, "follow": follow, "rounds": args.rounds, "runs": runs,
              "levels": levels, "floor_runs": floor_runs, "floor_levels": floor_levels, "against_floor": against_floor,
              "targets": {"p99_ms_at_8": TARGET_P99_MS_AT_8, "requests_per_s": TARGET_RPS,
                          "p99_at_8_met": at8["p99_ms"] <= TARGET_P99_MS_AT_8, "throughput_met": best >= TARGET_RPS,
                          "floor_share_at_8": TARGET_FLOOR_SHARE_AT_8, "floor_p99_ratio_at_8": TARGET_FLOOR_P99_RATIO_AT_8,
                          "floor_share_at_8_met": floor8["throughput_share"] >= TARGET_FLOOR_SHARE_AT_8,
                          "floor_p99_at_8_met": floor8["p99_ratio"] <= TARGET_FLOOR_P99_RATIO_AT_8},
              "server_impressions": next((line for line in metrics_text.splitlines()
                                          if line.startswith("drn_serving_impressions_total")), None)}
    args.out.write_text(json.dumps(result, indent=2))

    print(f"in-process, 50 candidates (medians): features {scoring['features_ms_median']:.3f} ms, "
          f"W and W~ stacked {scoring['score_w_and_w_tilde_stacked_ms_median']:.3f} ms "
          f"(torch forward: W {scoring['score_w_torch_ms_median']:.3f} ms, "
          f"W~ {scoring['score_w_tilde_torch_ms_median']:.3f} ms); "
          f"{scoring['nonzero_state_inputs_median']:.0f} of {NetworkConfig().state_dim} state inputs non-zero; "
          f"advantage first layers as weight @ inputs {scoring['first_layer_weight_at_inputs_ms_median']:.3f} ms, "
          f"as inputs @ weight {scoring['first_layer_inputs_at_weight_ms_median']:.3f} ms")
    if "vw_predict_ms_median" in scoring:
        print(f"Vowpal Wabbit squarecb on the same 50 candidates: predict {scoring['vw_predict_ms_median']:.3f} ms, "
              f"with its text made from the features {scoring['vw_text_and_predict_ms_median']:.3f} ms; W and W~ "
              f"stacked take {scoring['stacked_over_vw_predict']:.2f}x VW's predict")
    else:
        print("Vowpal Wabbit not installed (pip install -e '.[peers]'): no comparison with its predict")
    print(f"following the registry: a look by stage {follow['registry_served_version_ms']:.1f} ms, by alias "
          f"{follow['registry_champion_version_ms']:.1f} ms, at the open round {follow['open_round_ms']:.2f} ms; "
          f"one full garbage collection of {follow['gc_objects']} objects {follow['full_gc_ms']:.0f} ms")
    print(f"history: {args.history} impressions, {clicks} clicks logged before the run; "
          f"log store: {result['log_store']}")
    print(f"{'round':>5} {'loop ms':>7} {'clients':>7} {'requests':>8} {'fail':>4} {'req/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'spread':>6} {'server CPU ms/req':>17} {'(event loop)':>12} {'client CPU ms/req':>17}")
    for r in runs + levels:
        print(f"{r['round']:>5} {r['python_loop_ms']:>7.0f} {r['clients']:>7} {r['requests']:>8} {r['failures']:>4} "
              f"{r['requests_per_s']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['connection_p50_spread']:>6.2f} "
              f"{r['server_cpu_ms_per_request']:>17.2f} {r['loop_thread_cpu_ms_per_request']:>12.2f} "
              f"{r['client_cpu_ms_per_request']:>17.2f}")
    print("(loop ms: a fixed pure-Python loop timed before the round, the machine's speed at the time; lower is faster."
          " spread: the slowest connection's median latency over the fastest one's, 1.00 when all are served alike."
          " Round 'median': each column's median over the rounds.)")
    print(f"targets on the medians: p99 <= {TARGET_P99_MS_AT_8} ms at 8 clients: {result['targets']['p99_at_8_met']}"
          f" ({at8['p99_ms']:.1f}); >= {TARGET_RPS} req/s at best: {result['targets']['throughput_met']} ({best:.0f})")
    print()
    print(floor_table(levels, floor_levels, against_floor))
    print(f"targets against the floor at 8 clients: throughput >= {TARGET_FLOOR_SHARE_AT_8} of the floor's: "
          f"{result['targets']['floor_share_at_8_met']} ({floor8['throughput_share']:.2f}); p99 <= "
          f"{TARGET_FLOOR_P99_RATIO_AT_8}x the floor's: {result['targets']['floor_p99_at_8_met']} "
          f"({floor8['p99_ratio']:.2f}x)")


def floor_ratios(service: dict, floor: dict, service_runs: list[dict], floor_runs: list[dict]) -> dict:
    """The service against the floor at one level: ratios of the medians, and the range of the per-round ratios
    (each round's service and floor ran back to back, so their ratio moves less than either alone)."""
    shares = [s["requests_per_s"] / f["requests_per_s"] for s, f in zip(service_runs, floor_runs)]
    p99s = [s["p99_ms"] / f["p99_ms"] for s, f in zip(service_runs, floor_runs)]
    return {"clients": service["clients"], "throughput_share": service["requests_per_s"] / floor["requests_per_s"],
            "throughput_share_per_round": shares, "p99_ratio": service["p99_ms"] / floor["p99_ms"],
            "p99_ratio_per_round": p99s}


def floor_table(levels: list[dict], floor_levels: list[dict], against_floor: list[dict]) -> str:
    """The service next to its floor, as Markdown (benchmarks/RESULTS.md quotes it)."""
    lines = ["| clients | /recommend req/s | floor req/s | share of floor (per round) | /recommend p50 / p99 ms | "
             "floor p50 / p99 ms | p99 ratio (per round) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for service, base, ratio in zip(levels, floor_levels, against_floor):
        shares = ", ".join(f"{s:.2f}" for s in ratio["throughput_share_per_round"])
        p99s = ", ".join(f"{s:.2f}" for s in ratio["p99_ratio_per_round"])
        lines.append(f"| {service['clients']} | {service['requests_per_s']:.0f} | {base['requests_per_s']:.0f} | "
                     f"{ratio['throughput_share']:.2f} ({shares}) | {service['p50_ms']:.2f} / {service['p99_ms']:.2f} | "
                     f"{base['p50_ms']:.2f} / {base['p99_ms']:.2f} | {ratio['p99_ratio']:.2f} ({p99s}) |")
    return "\n".join(lines)


def _median_level(runs: list[dict]) -> dict:
    """One concurrency level summarised over rounds: each number's median (the machine's speed drifts)."""
    numeric = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and k not in ("clients", "round")]
    return {"round": "median", "clients": runs[0]["clients"],
            **{k: statistics.median(r[k] for r in runs) for k in numeric}}

if __name__ == "__main__":
    main()
