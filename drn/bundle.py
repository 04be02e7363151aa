"""A model version's contents and their files: the network's plain weights, the config that rebuilds it and the
feature schema it was trained on, written with a manifest of checksums and read back only whole. The registry
adapter (drn.registry) stores and loads these files; serving and the updates turn bundles into networks and back.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from drn.features import SCHEMA, FeatureSchema
from drn.model import DuelingQNetwork, network_from_weights

WEIGHTS, CONFIG, SCHEMA_FILE, MANIFEST = "weights.pt", "config.json", "feature_schema.json", "manifest.json"
BUNDLE_FILES = (WEIGHTS, CONFIG, SCHEMA_FILE)
BUNDLE_FORMAT = "drn-bundle/1"


class CorruptBundleError(ValueError):
    """A bundle folder is incomplete, fails its checksums, or holds something other than plain tensors."""


@dataclass
class ModelBundle:
    weights: dict[str, torch.Tensor]  # a state_dict
    config: dict  # JSON-able hyper-parameters that rebuild the network
    feature_schema: dict  # JSON-able


def bundle_of(network: DuelingQNetwork) -> ModelBundle:
    """The registry's form of a network: plain weights, the config that rebuilds it, the feature schema."""
    weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return ModelBundle(weights, network.config.to_dict(), SCHEMA.to_dict())


def network_of(bundle: ModelBundle) -> DuelingQNetwork:
    """Rebuild a bundle's network, refusing one whose features this code does not compute."""
    SCHEMA.check_compatible(FeatureSchema.from_dict(bundle.feature_schema))
    return network_from_weights(bundle.config, bundle.weights)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from e


def write_bundle(bundle: ModelBundle, folder: str | os.PathLike) -> str:
    """Write the bundle files and manifest into ``folder``; return the manifest's sha256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(bundle.weights, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in bundle.weights.items()
    ):
        raise ValueError("bundle.weights must be a state_dict: dict[str, torch.Tensor]")
    weights = {k: v.detach().cpu().contiguous() for k, v in bundle.weights.items()}
    torch.save(weights, folder / WEIGHTS)
    (folder / CONFIG).write_bytes(_json_bytes(bundle.config, "config"))
    (folder / SCHEMA_FILE).write_bytes(_json_bytes(bundle.feature_schema, "feature_schema"))
    manifest = {
        "format": BUNDLE_FORMAT,
        "files": {n: {"sha256": _sha256(folder / n), "bytes": (folder / n).stat().st_size} for n in BUNDLE_FILES},
    }
    (folder / MANIFEST).write_bytes(_json_bytes(manifest, "manifest"))
    return _sha256(folder / MANIFEST)


def read_bundle(folder: str | os.PathLike, manifest_sha256: str | None = None) -> ModelBundle:
    """Check a bundle folder completely, then load it. Raises CorruptBundleError on any defect."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CorruptBundleError(f"incomplete model: {MANIFEST} is missing in {folder}")
    if manifest_sha256 is not None and _sha256(mpath) != manifest_sha256:
        raise CorruptBundleError(f"{MANIFEST} does not match the checksum recorded in the registry")
    try:
        manifest = json.loads(mpath.read_bytes())
        files = manifest["files"]
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"unknown bundle format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptBundleError(f"unreadable {MANIFEST}: {e}") from e
    missing = [n for n in BUNDLE_FILES if n not in files or not (folder / n).is_file()]
    if missing:
        raise CorruptBundleError(f"incomplete model: missing {', '.join(missing)}")
    for name in BUNDLE_FILES:
        p, want = folder / name, files[name]
        if p.stat().st_size != want.get("bytes") or _sha256(p) != want.get("sha256"):
            raise CorruptBundleError(f"checksum mismatch for {name}: the file is corrupt or was altered")
    try:
        # weights_only=True: the restricted unpickler; tensors and plain containers only, never code
        weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for truncated zips, ...
        raise CorruptBundleError(f"{WEIGHTS} is not a plain tensor state_dict: {type(e).__name__}: {e}") from e
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CorruptBundleError(f"{WEIGHTS} does not hold a dict[str, Tensor]")
    try:
        config = json.loads((folder / CONFIG).read_bytes())
        schema = json.loads((folder / SCHEMA_FILE).read_bytes())
    except ValueError as e:
        raise CorruptBundleError(f"unreadable JSON in model: {e}") from e
    return ModelBundle(weights=weights, config=config, feature_schema=schema)
