"""Peak memory and time of offline double-DQN training at two log sizes, streaming the logs from disk.

The replay buffer has a fixed capacity and the behaviors file is read line by line each pass, so peak memory
should stay flat as the log grows while time grows linearly. Each size runs in a fresh process (peak RSS is
per process).

    .venv/bin/python benchmarks/training_memory.py --days 2 6 --users 500 --out out/training_memory.json
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


def measure(folder: Path) -> dict:
    """Train on one generated log folder in this process; report peak RSS and wall time."""
    from drn.mind import iter_time_ordered, read_news
    from drn.model import build_network
    from drn.model import set_threads
    from drn.training import TrainConfig, Trainer
    set_threads()
    news = read_news(folder / "news.tsv")
    started = time.perf_counter()
    summary = Trainer(build_network(), TrainConfig(epochs=1)).fit(lambda: iter_time_ordered(folder / "behaviors.tsv"), news)
    return {"impressions": summary["impressions"], "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "buffer_mb": round(summary["buffer_bytes"] / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    from drn.world import generate_logs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for days in args.days:
            folder = Path(tmp) / f"d{days}"
            generate_logs(folder, days=days, users=args.users, seed=0)
            child = subprocess.run([sys.executable, __file__, "--measure", str(folder)], check=True,
                                   capture_output=True, text=True)
            rows.append({"days": days, **json.loads(child.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
