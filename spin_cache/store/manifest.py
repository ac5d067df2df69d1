"""The manifest: what produced a store, its fingerprint (what makes values differ) and its own hash."""

from __future__ import annotations

import json
import time
from typing import Any

from .. import __version__
from .layout import FORMAT_VERSION, VALUES_ENCODING, Layout, canonical_hash


def store_fingerprint(manifest: dict) -> str:
    """Hash of everything that decides the store's values: model files, dataset, extraction settings."""
    return canonical_hash(fingerprint_inputs(manifest))


MANIFEST_HASH_KEY = "manifest_sha256"


def manifest_hash(manifest: dict) -> str:
    """sha256 of the whole manifest (less this hash): any edit to zarr.json's manifest shows in `verify`."""
    return canonical_hash({k: v for k, v in manifest.items() if k != MANIFEST_HASH_KEY})


def fingerprint_inputs(manifest: dict) -> dict:
    """What the fingerprint hashes. Its `format_version` is the encoding of the values (`VALUES_ENCODING`), not the
    store's format: format 2 only moved the side files, so it hashes as format 1 and fingerprints stay."""
    model = manifest["model"]
    version = manifest["format_version"]
    return {
        "format_version": VALUES_ENCODING.get(version, version) if type(version) is int else version,
        "model": {k: model[k] for k in ("config_sha256", "weights_sha256", "tokenizer_sha256")},
        "dataset": manifest["dataset"]["fingerprint"],
        "extraction": manifest["extraction"],
    }


def describe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Flat list of 'key: old -> new' for the fingerprint inputs that differ."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:12] + "…"


def new_manifest(*, model: dict, dataset: dict, extraction: dict, layout: Layout) -> dict:
    manifest = {
        "format": "spin-cache-store",
        "format_version": FORMAT_VERSION,
        "spin_cache_version": __version__,
        "status": "incomplete",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "dataset": dataset,
        "extraction": extraction,
        "layout": layout.to_dict(),
    }
    manifest["fingerprint"] = store_fingerprint(manifest)
    return manifest
