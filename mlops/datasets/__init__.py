"""User datasets: validated CSV or Parquet files, versioned, catalogued, expired by TTL."""

from mlops.datasets.catalog import DatasetCatalog, DatasetVersion, open_catalog
from mlops.datasets.service import (
    ORPHAN_GRACE,
    add_dataset,
    cleanup_expired,
    dataset_file,
    list_datasets,
    remove_orphans,
)
from mlops.datasets.validate import Kind, Limits, Profile, check_name, profile

__all__ = [
    "ORPHAN_GRACE",
    "DatasetCatalog",
    "DatasetVersion",
    "Kind",
    "Limits",
    "Profile",
    "add_dataset",
    "check_name",
    "cleanup_expired",
    "dataset_file",
    "list_datasets",
    "open_catalog",
    "profile",
    "remove_orphans",
]
