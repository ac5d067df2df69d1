"""The manifest: what produced a store, its fingerprint (what makes values differ) and its own hash; `Manifest` is
its typed form (zarr.json holds `Manifest.to_json()`)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import __version__
from ..errors import IntegrityError
from .layout import FORMAT_VERSION, VALUES_ENCODING, Layout, canonical_hash, check_format_version


def store_fingerprint(manifest: dict[str, Any]) -> str:
    """Hash of everything that decides the store's values: model files, dataset, extraction settings."""
    return canonical_hash(fingerprint_inputs(manifest))


MANIFEST_HASH_KEY = "manifest_sha256"


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the whole manifest (less this hash): any edit to zarr.json's manifest shows in `verify`."""
    return canonical_hash({k: v for k, v in manifest.items() if k != MANIFEST_HASH_KEY})


def fingerprint_inputs(manifest: dict[str, Any]) -> dict[str, Any]:
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


def describe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
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


def new_manifest(
    *, model: dict[str, Any], dataset: dict[str, Any], extraction: dict[str, Any], layout: Layout
) -> dict[str, Any]:
    """A new store's manifest as the dict zarr.json holds (`Manifest.new(...).to_json()`)."""
    return Manifest.new(model=model, dataset=dataset, extraction=extraction, layout=layout).to_json()


#: The keys every manifest has, in the order spin-cache writes them, and the JSON type of each.
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "spin_cache_version": str,
    "status": str,
    "created": str,
    "model": dict,
    "dataset": dict,
    "extraction": dict,
    "layout": dict,
    "fingerprint": str,
}
#: The keys only some manifests have (in the order spin-cache appends them), and the JSON type of each.
_OPTIONAL: dict[str, type | tuple[type, ...]] = {"synthetic": dict, MANIFEST_HASH_KEY: str, "run": dict}


@dataclass(frozen=True)
class Manifest:
    """A store's manifest, typed: what zarr.json's `attributes["spin_cache"]` holds.

    `Manifest.from_json(d).to_json()` is `d` again, key order and every value included, so the manifest hash and
    the fingerprint of every existing store are unchanged; `from_json` refuses a manifest for which that does not
    hold (a value of the wrong type, a malformed layout) as damaged. The mapping fields are the manifest's own
    dicts: read them, never change them (`dataclasses.replace` makes a changed manifest).
    """

    format: str
    """Always "spin-cache-store": what the attributes describe."""
    format_version: int
    """The store format it was written in (`FORMAT_VERSION`; formats `READABLE_FORMATS` are read); the format
    decides where the side files are (`SideFiles`)."""
    spin_cache_version: str
    """The spin-cache version that created the store."""
    status: str
    """"incomplete" while row blocks are being written, "complete" once every block is committed."""
    created: str
    """When the store was created, UTC, as YYYY-MM-DDTHH:MM:SSZ."""
    model: Mapping[str, Any]
    """The model: name, path, sha256 of its config, weights and tokenizer files, family, is_decoder, num_layers
    (and a hub model's repo id and revision)."""
    dataset: Mapping[str, Any]
    """The dataset: name, content fingerprint, n_rows, rows_per_split, label_names (and where the rows came from)."""
    extraction: Mapping[str, Any]
    """The settings that change stored values: kinds, poolings, max_length, dtype, compute_dtype."""
    layout: Layout
    """The arrays and their chunking (the manifest's "layout")."""
    fingerprint: str
    """sha256 of what decides the stored values (`fingerprint_inputs`): equal fingerprints, equal values."""
    synthetic: Mapping[str, Any] | None = None
    """A synthetic store's parameters and planted neurons (`spin_cache.synth`); None in an extracted store."""
    manifest_sha256: str | None = None
    """sha256 of the manifest less this field (`manifest_hash`), checked on every open of a complete store; None
    in a store an older spin-cache wrote, which is opened unchecked."""
    run: Mapping[str, Any] | None = None
    """How the store was written (versions, timing, overflow, ...), set when it is marked complete; None before."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this spin-cache does not know (a newer writer's), kept so that the round trip loses nothing."""
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """The order of the keys in zarr.json, kept so that writing the manifest back gives the same bytes."""

    @classmethod
    def new(
        cls,
        *,
        model: Mapping[str, Any],
        dataset: Mapping[str, Any],
        extraction: Mapping[str, Any],
        layout: Layout,
        synthetic: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """The manifest of a store about to be created: format `FORMAT_VERSION`, incomplete, its fingerprint set."""
        inputs = {"format_version": FORMAT_VERSION, "model": model, "dataset": dataset, "extraction": extraction}
        return cls(
            format="spin-cache-store",
            format_version=FORMAT_VERSION,
            spin_cache_version=__version__,
            status="incomplete",
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model=model,
            dataset=dataset,
            extraction=extraction,
            layout=layout,
            fingerprint=store_fingerprint(inputs),
            synthetic=synthetic,
        )

    @classmethod
    def from_json(cls, d: object) -> Manifest:
        """Read zarr.json's manifest; `IntegrityError` naming what is missing or malformed (`InputError` for a
        format written by a newer spin-cache)."""
        if not isinstance(d, Mapping):
            raise IntegrityError(f"the manifest is {type(d).__name__}, not a JSON object; the store is damaged")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise IntegrityError(f"the manifest lacks {', '.join(map(repr, missing))}; the store is damaged")
        for key, kind in (_REQUIRED | _OPTIONAL).items():
            value = d.get(key)
            if key in d and not (isinstance(value, kind) and not isinstance(value, bool)):
                if key in _OPTIONAL and value is None:
                    continue
                raise IntegrityError(
                    f"the manifest's {key!r} is {type(value).__name__}, not {_json_type(kind)}; the store is damaged"
                )
        known = set(_REQUIRED) | set(_OPTIONAL)
        manifest = cls(
            format=d["format"],
            format_version=check_format_version(d["format_version"]),
            spin_cache_version=d["spin_cache_version"],
            status=d["status"],
            created=d["created"],
            model=d["model"],
            dataset=d["dataset"],
            extraction=d["extraction"],
            layout=Layout.from_dict(d["layout"]),
            fingerprint=d["fingerprint"],
            synthetic=d.get("synthetic"),
            manifest_sha256=d.get(MANIFEST_HASH_KEY),
            run=d.get("run"),
            extra={k: v for k, v in d.items() if k not in known},
            key_order=tuple(d),
        )
        if json.dumps(manifest.to_json()) != json.dumps(dict(d)):
            raise IntegrityError("the manifest's layout is not as spin-cache writes it; the store is damaged")
        return manifest

    def to_json(self) -> dict[str, Any]:
        """The manifest as zarr.json holds it (a fresh top-level dict; the mappings inside are this manifest's)."""
        values: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "spin_cache_version": self.spin_cache_version,
            "status": self.status,
            "created": self.created,
            "model": self.model,
            "dataset": self.dataset,
            "extraction": self.extraction,
            "layout": self.layout.to_dict(),
            "fingerprint": self.fingerprint,
        }
        for key, value in (("synthetic", self.synthetic), (MANIFEST_HASH_KEY, self.manifest_sha256), ("run", self.run)):
            if value is not None or key in self.key_order:  # an explicit null stays
                values[key] = value
        values |= self.extra
        order = [k for k in self.key_order if k in values] + [k for k in values if k not in self.key_order]
        return {k: values[k] for k in order}

    @property
    def is_complete(self) -> bool:
        """Whether the status is "complete" (every row block committed)."""
        return self.status == "complete"

    @property
    def label_names(self) -> list[str]:
        """The dataset's class names in label order, as strings (a new list)."""
        return [str(name) for name in self.dataset["label_names"]]

    def fingerprint_inputs(self) -> dict[str, Any]:
        """What the fingerprint hashes (`fingerprint_inputs`); `KeyError` if the model lacks a file hash."""
        return fingerprint_inputs(self.to_json())

    def expected_fingerprint(self) -> str:
        """The fingerprint recomputed from the manifest's inputs: `fingerprint` unless the manifest was edited."""
        return store_fingerprint(self.to_json())

    def expected_hash(self) -> str:
        """`manifest_sha256` recomputed: equal to it unless the manifest was edited after it was written."""
        return manifest_hash(self.to_json())

    def sealed(self) -> Manifest:
        """This manifest with `manifest_sha256` set to its own hash (what is written to zarr.json)."""
        return replace(self, manifest_sha256=self.expected_hash())

    def completed(self, run: Mapping[str, Any]) -> Manifest:
        """This manifest marked complete with its run info, sealed."""
        return replace(self, status="complete", run=run).sealed()


def _json_type(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", dict: "a JSON object"}
    return " or ".join(names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
