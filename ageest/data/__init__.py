"""Datasets: real-format loaders, the synthetic default, protocols, the torch Dataset.

See :mod:`ageest.data.loaders` for the table every loader returns, :mod:`ageest.data.splits`
for the protocols, :mod:`ageest.data.dataset` for the Dataset and transforms,
:mod:`ageest.data.synthetic` for the embedded synthetic faces and :mod:`ageest.data.integrity`
for errors and manifests.
"""

from ageest.data.dataset import AgeDataset, build_transforms, cache_size, cache_spec
from ageest.data.integrity import (
    DataError,
    LeakageError,
    MissingDataError,
    verify_dataset_manifest,
    write_dataset_manifest,
)
from ageest.data.loaders import (
    load_benchmark_json,
    load_clap2016,
    load_csv,
    load_fgnet,
    load_utkface,
)
from ageest.data.registry import DATASETS, DatasetInfo, get_dataset, list_datasets
from ageest.data.splits import Fold, check_disjoint, make_folds

__all__ = [
    "DATASETS", "AgeDataset", "DataError", "DatasetInfo", "Fold", "LeakageError",
    "MissingDataError", "build_transforms", "cache_size", "cache_spec", "check_disjoint",
    "get_dataset",
    "list_datasets", "load_benchmark_json", "load_clap2016", "load_csv", "load_fgnet",
    "load_utkface", "make_folds", "verify_dataset_manifest", "write_dataset_manifest",
]
