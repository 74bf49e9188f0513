"""The data order is a function of (seed, batches consumed) alone."""

import pytest
import torch

from sagan.data.batches import Batches
from sagan.data.folders import InMemoryImages


def _dataset(n=10):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return InMemoryImages(images, torch.arange(n), num_classes=n)


def _labels(stream, k):
    return [next(stream)[1].tolist() for _ in range(k)]


def test_resumed_stream_continues_exactly_across_epochs():
    ds = _dataset()
    full = _labels(Batches(ds, 3, seed=0, device=torch.device("cpu")), 9)  # 3 batches/epoch
    resumed = Batches(ds, 3, seed=0, device=torch.device("cpu"), consumed=4)
    assert _labels(resumed, 5) == full[4:]
    assert resumed.consumed == 9


def test_each_epoch_is_a_permutation_without_the_partial_batch():
    full = _labels(Batches(_dataset(), 3, seed=0, device=torch.device("cpu")), 6)
    for epoch in (full[:3], full[3:]):
        seen = [i for batch in epoch for i in batch]
        assert len(set(seen)) == 9  # 10 images, batch 3: one left out each epoch
    assert full[:3] != full[3:]


def _full_range_dataset(n=4):
    """Every image holds each pixel value 0..255 three times, at shifted places."""
    values = torch.arange(3 * 16 * 16)
    images = torch.stack([((values + 37 * i) % 256).view(3, 16, 16) for i in range(n)])
    return InMemoryImages(images.to(torch.uint8), torch.arange(n), num_classes=n)


class _ThroughLoader(torch.utils.data.Dataset):
    """The same items, but not an InMemoryImages: Batches takes its DataLoader path."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]


@pytest.mark.parametrize("path", ["in_memory", "loader"])
def test_pixel_values_map_to_v_over_127_5_minus_one(path):
    ds = _full_range_dataset()
    source = ds if path == "in_memory" else _ThroughLoader(ds)
    stream = Batches(source, 2, seed=0, device=torch.device("cpu"))
    for _ in range(2):  # one epoch: all four images
        x, y = next(stream)
        v = ds.images[y]  # labels are the image indices
        assert x.dtype == torch.float32 and x.shape == v.shape
        # 0 -> -1, 127 -> -1/255, 128 -> 1/255, 255 -> 1. fp32 rounds v/127.5 before
        # subtracting 1, hence 1e-6; a wrong scale or offset (v/128 - 1 is off by 0.008
        # at 255) fails.
        expected = v.double() / 127.5 - 1
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)
        assert set(v.unique().tolist()) == set(range(256))
        assert (x[v == 0] == -1).all() and (x[v == 255] == 1).all()


def test_seed_changes_the_order():
    a = _labels(Batches(_dataset(), 3, seed=0, device=torch.device("cpu")), 3)
    b = _labels(Batches(_dataset(), 3, seed=1, device=torch.device("cpu")), 3)
    assert a != b


def test_loader_path_gives_the_same_order_as_the_in_memory_path():
    ds = _dataset()

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    a = _labels(Batches(ds, 3, seed=0, device=torch.device("cpu"), consumed=2), 4)
    b = _labels(Batches(Plain(), 3, seed=0, device=torch.device("cpu"), consumed=2), 4)
    assert a == b
