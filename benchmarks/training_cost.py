"""What a major update's work costs as the log grows: replay (point-in-time features of every impression) and
double-DQN training, in samples per second, wall time and peak memory, at 1x, 4x and 16x log sizes; and the
largest log's replay sharded over a local Dask cluster, as the major update runs it with DRN_DASK_ADDRESS set.

Each size runs in a fresh process (peak RSS is per process) on logs of the simulated world, streamed from disk:
the replay buffer has a fixed capacity and the behaviors file is read line by line each pass, so peak memory should
stay flat while time grows linearly. The sharded replay runs drn.sharding's shards (the tasks of
flows/sharded_replay.py) on `--workers` Dask worker processes, each reading the log itself, and is timed against the
sequential replay of the same log in the same process.

    .venv/bin/python benchmarks/training_cost.py --out out/training_cost.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES_DAYS = (1, 4, 16)  # 1x, 4x, 16x
SHARDS_PER_WORKER = 2


def _shard(folder: str, lo: int, hi: int) -> int:
    """One shard task: a worker reads the log and computes impressions [lo, hi)'s features (returns how many)."""
    from drn.mind import load_dataset
    from drn.model import set_threads
    from drn.sharding import shard_samples
    set_threads()
    data = load_dataset(folder)
    return len(shard_samples(data.impressions, data.news, lo, hi))


def sharded_seconds(folder: Path, impressions: int, workers: int) -> dict:
    """Wall time of the whole log's replay in shards on a local cluster of `workers` processes (cluster start-up
    not counted), and the samples they built."""
    from distributed import Client, LocalCluster
    from drn.sharding import shard_bounds
    bounds = shard_bounds(impressions, workers * SHARDS_PER_WORKER)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(lambda: None)  # every worker up before the clock starts
        started = time.perf_counter()
        counts = client.gather(client.map(_shard, [str(folder)] * len(bounds), [lo for lo, _ in bounds],
                                          [hi for _, hi in bounds]))
        return {"workers": workers, "shards": len(bounds), "samples": sum(counts),
                "seconds": round(time.perf_counter() - started, 2)}


def measure(folder: Path, workers: int) -> dict:
    """In this process: the sequential replay alone, then one training pass (which replays as it trains); with
    `workers`, the replay again in shards on a Dask cluster."""
    from drn.features import FeatureState, replay
    from drn.mind import iter_time_ordered, read_news
    from drn.model import build_network, set_threads
    from drn.training import TrainConfig, Trainer
    set_threads()
    news = read_news(folder / "news.tsv")
    started = time.perf_counter()
    replayed = sum(1 for _ in replay(iter_time_ordered(folder / "behaviors.tsv"), FeatureState(news)))
    replay_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = Trainer(build_network(), TrainConfig(epochs=1)).fit(lambda: iter_time_ordered(folder / "behaviors.tsv"),
                                                                  news)
    fit_s = time.perf_counter() - started
    row = {"impressions": summary["impressions"], "replay_seconds": round(replay_s, 2),
           "replay_samples_per_s": round(replayed / replay_s), "train_seconds": round(fit_s, 2),
           "train_samples_per_s": round(summary["impressions"] / fit_s), "gradient_steps": summary["steps"],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "buffer_mb": round(summary["buffer_bytes"] / 2**20, 1)}
    if workers:
        row["sharded_replay"] = sharded_seconds(folder, replayed, workers)
        row["sharded_replay"]["speedup"] = round(replay_s / row["sharded_replay"]["seconds"], 2)
    return row


def table(rows: list[dict]) -> str:
    """The sizes side by side, as Markdown (benchmarks/RESULTS.md quotes it)."""
    base = rows[0]
    lines = ["| log | impressions | replay s (samples/s) | training pass s (samples/s) | time / 1x's, per impression "
             "| peak RSS MB (buffer) |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        per = (row["train_seconds"] / row["impressions"]) / (base["train_seconds"] / base["impressions"])
        lines.append(f"| {row['days'] // base['days']}x ({row['days']} days) | {row['impressions']} | "
                     f"{row['replay_seconds']} ({row['replay_samples_per_s']}) | {row['train_seconds']} "
                     f"({row['train_samples_per_s']}) | {per:.2f} | {row['peak_rss_mb']} ({row['buffer_mb']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=list(SIZES_DAYS), help="log sizes, in world days")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="Dask workers for the largest log's sharded replay")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workers)))
        return
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    from drn.world import generate_logs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for days in args.days:
            folder = Path(tmp) / f"d{days}"
            print(f"generating {days} days of logs ({args.users} users) ...", file=sys.stderr, flush=True)
            generate_logs(folder, days=days, users=args.users, seed=0)
            workers = args.workers if days == max(args.days) else 0
            child = subprocess.run([sys.executable, __file__, "--measure", str(folder), "--workers", str(workers)],
                                   check=True, capture_output=True, text=True)
            rows.append({"days": days, **json.loads(child.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    sharded = rows[-1].get("sharded_replay")
    if sharded:
        print(f"largest log's replay on {sharded['workers']} Dask workers ({sharded['shards']} shards): "
              f"{sharded['seconds']} s against {rows[-1]['replay_seconds']} s sequential ({sharded['speedup']}x)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
