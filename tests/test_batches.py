"""The data order is a function of (seed, batches consumed) alone."""

import torch

from sagan.batches import Batches
from sagan.data import InMemoryImages


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


def test_images_arrive_in_minus_one_to_one_and_seed_changes_the_order():
    x, _ = next(Batches(_dataset(), 3, seed=0, device=torch.device("cpu")))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
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
