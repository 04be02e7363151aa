"""Starting and stopping the parts: each in its own process group, its output in a log file, its pid in a file.

A part may start children of its own (Prefect's runner starts one process per flow run, MLflow starts uvicorn
workers), so stopping signals the whole process group, never a name pattern. The pid file lets `drn down`, run from
another shell, stop exactly what `drn up` started.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from stack.settings import HOST

STOP_GRACE_S = 10.0  # SIGTERM first: uvicorn and Prefect finish what they are writing; SIGKILL after this
POLL_S = 0.5  # how often a waiting loop looks again


class StackError(Exception):
    """Something the user can fix (a busy port, a part that did not come up): printed as one line."""


@dataclass(frozen=True)
class Part:
    """One long-running process of the stack."""

    name: str  # also the name of its log file
    argv: list[str]
    env: Mapping[str, str]


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the OS picks it): for tests and benchmarks that start parts beside others."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something already listens on `port` (checked by connecting, which needs no privileges)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Refuse to start anything when a port is taken: one line naming the part, the port and the flag."""
    busy = [f"{name} port {port}" for name, port in ports.items() if port_in_use(port)]
    if busy:
        raise StackError(f"already in use: {', '.join(busy)} (another `drn up`? stop it with `drn down`, "
                         "or choose other ports with --prefect-port / --mlflow-port / --api-port)")


def listens_in_group(port: int, group: int) -> bool:
    """True when the socket listening on `port` belongs to process group `group`.

    A health check alone cannot tell our server from another one on the same port (two `drn up` started within
    the same seconds both pass the free-port check; the loser's server exits, the winner's answers both)."""
    import psutil
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return os.getpgid(conn.pid) == group
            except ProcessLookupError:
                return False
    return False


def python_argv(*args: str) -> list[str]:
    """A command run by this interpreter, so children use the same virtual environment without PATH games."""
    return [sys.executable, *args]


def start(part: Part, log_dir: Path, capture_stdout: bool = False) -> subprocess.Popen:
    """Start `part` as the leader of a new process group (so it and its children stop together); its output goes
    to `log_dir/<name>.log`, except stdout when `capture_stdout` (a one-off step whose answer the caller reads)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{part.name}.log", "ab") as log:
        return subprocess.Popen(part.argv, env={**os.environ, **part.env},
                                stdout=subprocess.PIPE if capture_stdout else log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def write_pids(pid_file: Path, pids: Mapping[str, int]) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(json.dumps(dict(pids), indent=1))


def read_pids(pid_file: Path) -> dict[str, int]:
    return json.loads(pid_file.read_text()) if pid_file.is_file() else {}


def _alive(pid: int) -> bool:
    """True while any process of group `pid` lives (an exited leader of ours is reaped first, so a zombie does not
    count)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (`drn down` from another shell) or already reaped
        pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused pid of someone else's process: not ours to touch
        return False
    return True


def stop_groups(pids: Mapping[str, int], grace_s: float = STOP_GRACE_S,
                say: Callable[[str], None] = lambda line: None) -> None:
    """Stop each group in the reverse of start order (serving and the flows before the servers they talk to):
    SIGTERM, up to `grace_s` to finish, then SIGKILL. Killing is safe for the stores: every write the parts make
    is one database transaction, and a model version becomes visible only when complete."""
    for name, pid in reversed(list(pids.items())):
        if not _alive(pid):
            continue
        say(f"stopping {name} (process group {pid})")
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if _alive(pid):
            say(f"{name} did not stop within {grace_s:.0f} s: killing it")
            os.killpg(pid, signal.SIGKILL)
