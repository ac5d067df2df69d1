"""The activation store: a Zarr v3 group with one array per (kind, pooling, layer), its layout and manifest, the
shard encoder, access to local and remote locations, sharing (push, ls) and the writer's lock."""

from .activation_store import ActivationStore
from .layout import Layout
from .remote import list_stores, open_store, push

__all__ = ["ActivationStore", "Layout", "list_stores", "open_store", "push"]
