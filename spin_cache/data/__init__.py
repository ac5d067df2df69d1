"""Texts and labels in: the built-in SST-2, CSV/TSV/JSON Lines/Parquet/`LABEL TEXT` files, split into train/dev/test."""

from .loading import LabelledDataset, load_dataset

__all__ = ["LabelledDataset", "load_dataset"]
