"""Everything the HTTP service can be told, read once at start from the environment (flags of `drn serve` win).

The stores come from `drn.config.Settings` (DRN_HOME, DRN_MLFLOW_URI, DRN_LOGSTORE_URL, DRN_MODEL_NAME); how an
exploration round is served (W~'s noise, the interleaving) is read from the round itself in the log store. The
service's own settings are:

    DRN_SERVE_HOST            bind address (default 127.0.0.1: reachable from this machine only)
    DRN_SERVE_PORT            port (default 8000)
    DRN_SERVE_FOLLOW          which registry marker names the served version: "stage" (Production, what the MLflow
                              UI rolls back with; default) or "alias" (alias champion)
    DRN_SERVE_POLL_S          seconds between looks at the registry and the log store's exploration round (default 2)
    DRN_SERVE_MAX_CANDIDATES  most candidates one /recommend may rank (default 500); more is refused with 422
    DRN_SERVE_SECRET          HMAC-SHA256 key that signs impression ids (default: $DRN_HOME/serving.secret, created
                              with mode 0600 on first start, so ids stay valid across restarts)
    DRN_SERVE_ADMIN_TOKEN     bearer token for /admin/*; unset = admin routes refused (403)
    DRN_SERVE_CLOCK_TOKEN     callers sending it in header X-DRN-Clock-Token may set event times (a simulated world
                              on a compressed clock); everyone else gets server time; unset = nobody may
    DRN_SERVE_FEEDBACK_WINDOW_S  seconds after its impression that a click or a return is still accepted (default
                              604800, a week: MIND's profile window); later ones are refused, so a replayed old
                              event never reaches training
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Mapping

from drn.config import Settings
from drn.options import option


class Follow(StrEnum):
    """Which registry marker names the served version."""

    STAGE = "stage"  # stage Production: what the MLflow UI rolls back with (the default)
    ALIAS = "alias"  # alias champion

SECRET_FILE = "serving.secret"
SECRET_BYTES = 32  # HMAC-SHA256 key length: the hash's block-size-safe, full-strength key


@dataclass(frozen=True)
class ServeSettings:
    stores: Settings
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 8000
    follow: Follow = Follow.STAGE
    poll_s: float = 2.0  # seconds between looks at the log store's open round (cheap)
    registry_poll_s: float = 10.0  # seconds between registry looks when no round moved (ms each: serving_bench)
    max_candidates: int = 500
    admin_token: str | None = None
    clock_token: str | None = None
    feedback_window_s: float = 7 * 86400.0  # a click or return later than this after its impression is refused

    def __post_init__(self) -> None:
        """Refuse a bad setting at start, in words, instead of at the first request."""
        object.__setattr__(self, "follow", option(Follow, self.follow, "DRN_SERVE_FOLLOW"))
        if (self.poll_s <= 0 or self.registry_poll_s <= 0 or self.feedback_window_s <= 0 or self.max_candidates < 1
                or not 0 < self.port < 65536):
            raise ValueError("DRN_SERVE_POLL_S, DRN_SERVE_REGISTRY_POLL_S and DRN_SERVE_FEEDBACK_WINDOW_S must be > 0, "
                             "DRN_SERVE_MAX_CANDIDATES >= 1, DRN_SERVE_PORT in 1..65535")
        if len(self.secret) < 16:
            raise ValueError("DRN_SERVE_SECRET must be at least 16 bytes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Settings from the environment; `overrides` (flags of `drn serve`, tests) replace fields that are not None."""
        env = os.environ if environ is None else environ
        stores = Settings.from_env(env)
        secret = env.get("DRN_SERVE_SECRET")
        settings = cls(
            stores=stores,
            secret=secret.encode() if secret else _secret_file(stores.home / SECRET_FILE),
            host=env.get("DRN_SERVE_HOST") or cls.host,
            port=int(env.get("DRN_SERVE_PORT") or cls.port),
            follow=env.get("DRN_SERVE_FOLLOW") or cls.follow,
            poll_s=float(env.get("DRN_SERVE_POLL_S") or cls.poll_s),
            registry_poll_s=float(env.get("DRN_SERVE_REGISTRY_POLL_S") or cls.registry_poll_s),
            max_candidates=int(env.get("DRN_SERVE_MAX_CANDIDATES") or cls.max_candidates),
            admin_token=env.get("DRN_SERVE_ADMIN_TOKEN") or None,
            clock_token=env.get("DRN_SERVE_CLOCK_TOKEN") or None,
            feedback_window_s=float(env.get("DRN_SERVE_FEEDBACK_WINDOW_S") or cls.feedback_window_s),
        )
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _secret_file(path: Path) -> bytes:
    """The embedded default key: made once, readable by its owner only, reused by every later start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(SECRET_BYTES).encode())
    return path.read_bytes()
