"""The reference set an evaluation compares against: which images, how they are keyed.

The reference is ``cfg.data``'s ``eval.reference.split`` (built through
``sagan.data.datasets.build_dataset``, so any dataset kind, the prepared one included, serves),
the first ``eval.reference.n`` of a seeded permutation of it, and its fingerprint.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from sagan.metrics.protocol import DINOV2_METRICS, REFERENCE_METRICS


class LazySplit(Dataset):
    """An image folder's split that is listed only when its images are needed.

    Its size and fingerprint come from the folder's cached identity; a reference
    whose statistics are cached is then scored without listing the folder at all
    (``reference_statistics`` calls :meth:`build` only on a cache miss).
    """

    def __init__(self, data_cfg: Any, split: str, n: int):
        self.data_cfg, self.split, self.n = data_cfg, split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):  # pragma: no cover - build() is used instead
        raise TypeError("build() the split first")

    def build(self) -> Dataset:
        from sagan.data.datasets import build_dataset

        return build_dataset(self.data_cfg, self.split)


# (data config, split) -> (fingerprint, size) of image folders, for this process: a
# run evaluates many times, and its data may not change under it (resume refuses that).
_folder_splits: dict[tuple[str, str], tuple[str, int]] = {}


def needs_reference(metrics: list[str]) -> bool:
    """Whether any of ``metrics`` compares against real images (FID, KID, precision/
    recall on Inception features; the SWD on image patches)."""
    return any(m in REFERENCE_METRICS or m in DINOV2_METRICS or m == "swd" for m in metrics)


def reference_set(cfg: Any) -> tuple[Dataset, str] | None:
    """``(dataset, fingerprint)`` of the reference ``cfg.eval`` compares against, or
    None when no metric needs one: for a caller that plans (:func:`planned_protocol`)
    and then evaluates, so that the set is built once."""
    if not needs_reference(cfg.eval.metrics):
        return None
    dataset, key_parts = _reference_source(cfg, None)
    return dataset, key_parts["fingerprint"]


def _reference_source(
    cfg: Any, reference: tuple[Dataset, str] | None
) -> tuple[Dataset, dict[str, Any]]:
    split = cfg.eval.reference.split
    if reference is None:
        from sagan.data.datasets import build_dataset, dataset_fingerprint

        if cfg.data.name == "imagefolder":
            key = (cfg.data.model_dump_json(), split)
            if key not in _folder_splits:
                from sagan.data.folders import imagefolder_dir
                from sagan.data.identity import folder_identity

                n_images = folder_identity(imagefolder_dir(cfg.data, split))["n_images"]
                _folder_splits[key] = (dataset_fingerprint(cfg.data, split), n_images)
            fingerprint, n_images = _folder_splits[key]
            dataset = LazySplit(cfg.data, split, n_images)
        else:
            dataset = build_dataset(cfg.data, split)
            fingerprint = dataset_fingerprint(cfg.data, split)
    else:
        dataset, fingerprint = reference
    n = cfg.eval.reference.n if cfg.eval.reference.n is not None else len(dataset)
    key_parts = {
        "dataset": cfg.data.name,
        "split": split,
        "resolution": cfg.data.resolution,
        "n": n,
        "fingerprint": fingerprint,
    }
    return dataset, key_parts


def _swd_protocol(cfg: Any, key_parts: dict[str, Any], n_available: int) -> dict[str, Any]:
    """The SWD part of the protocol: equal numbers of real and generated images."""
    from sagan.metrics import swd
    from sagan.metrics.reference import subset_rule

    n = min(cfg.eval.n_samples, key_parts["n"], n_available)
    ref = {**key_parts, "n": n, "subset": subset_rule(n, n_available)}
    return swd.protocol(cfg.data.resolution, n, cfg.eval.seed, ref)


def _swd_real(dataset: Dataset, n: int, resolution: int, seed: int):
    """SWD descriptors of ``n`` reference images (the same seeded subset rule as the
    Inception statistics)."""
    from sagan.metrics import swd
    from sagan.metrics.reference import _images_only, _subset

    if isinstance(dataset, LazySplit):
        dataset = dataset.build()
    acc = swd.Descriptors(resolution, seed)
    subset = _subset(dataset, n) if n < len(dataset) else dataset
    for start in range(0, n, 256):
        acc.add(_images_only([subset[i] for i in range(start, min(n, start + 256))]))
    return acc


__all__ = ["LazySplit", "needs_reference", "reference_set"]
