"""sagan.prefetch: paths and verification, with only the network call replaced."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sagan import prefetch
from sagan.metrics import WEIGHTS_FILE, WEIGHTS_URL, default_weights_path, inception_weights_path
from tests import fakeweights

fake_dinov2_weights = fakeweights.fake_dinov2_weights

PAYLOAD = b"not really inception weights\n"
PAYLOAD_PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Replace the network download with one writing PAYLOAD; records (url, dst)."""
    calls: list[tuple[str, str]] = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst))
        Path(dst).write_bytes(PAYLOAD)

    monkeypatch.setattr(prefetch, "download_url_to_file", fake_download)
    return calls


def test_weights_go_where_evaluation_looks(torch_home, downloads):
    path = prefetch.fetch_weights(hash_prefix=PAYLOAD_PREFIX)
    assert path == torch_home / "hub" / "checkpoints" / WEIGHTS_FILE == default_weights_path()
    assert inception_weights_path(None) == path and path.read_bytes() == PAYLOAD
    assert [url for url, _ in downloads] == [WEIGHTS_URL]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_present_and_verified_weights_are_not_downloaded_again(torch_home, downloads):
    prefetch.fetch_weights(hash_prefix=PAYLOAD_PREFIX)
    prefetch.fetch_weights(hash_prefix=PAYLOAD_PREFIX)
    assert len(downloads) == 1


def test_download_with_the_wrong_hash_is_refused_and_not_kept(torch_home, downloads):
    # The real expected prefix (6726825d) cannot match PAYLOAD.
    with pytest.raises(prefetch.PrefetchError, match="expected one starting 6726825d") as err:
        prefetch.fetch_weights()
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(err.value)
    dest = default_weights_path()
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_existing_file_with_the_wrong_hash_is_an_error_not_overwritten(torch_home, downloads):
    dest = default_weights_path()
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"something else")
    with pytest.raises(prefetch.PrefetchError, match="Delete it"):
        prefetch.fetch_weights(hash_prefix=PAYLOAD_PREFIX)
    assert dest.read_bytes() == b"something else" and not downloads


def test_network_failure_is_explained(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(prefetch, "download_url_to_file", offline)
    with pytest.raises(prefetch.PrefetchError, match="machine with internet") as err:
        prefetch.fetch_weights()
    assert str(default_weights_path()) in str(err.value)
    assert prefetch.main(["--weights"]) == 1


@pytest.fixture
def cifar_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, bool]]:
    """Replace torchvision's CIFAR10 (whose constructor does the download); records its calls."""
    import torchvision

    calls: list[tuple[str, bool, bool]] = []

    class FakeCIFAR10:
        base_folder = torchvision.datasets.CIFAR10.base_folder

        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    return calls


def test_cifar10_fetches_both_splits_into_root(tmp_path, cifar_calls):
    folder = prefetch.fetch_cifar10(tmp_path / "data")
    assert folder == tmp_path / "data" / "cifar-10-batches-py"
    assert cifar_calls == [
        (str(tmp_path / "data"), True, True),
        (str(tmp_path / "data"), False, True),
    ]


def test_cli_flags_choose_what_to_fetch(tmp_path, monkeypatch, torch_home, downloads, cifar_calls):
    monkeypatch.setattr(prefetch, "WEIGHTS_SHA256_PREFIX", PAYLOAD_PREFIX)
    monkeypatch.chdir(tmp_path)

    assert prefetch.main(["--data", "cifar10", "--root", "elsewhere"]) == 0
    assert not downloads and [c[0] for c in cifar_calls] == ["elsewhere", "elsewhere"]

    cifar_calls.clear()
    assert prefetch.main(["--weights"]) == 0
    assert len(downloads) == 1 and not cifar_calls

    dinov2_calls = []
    monkeypatch.setattr(prefetch, "fetch_dinov2", lambda variant: dinov2_calls.append(variant))
    default_weights_path().unlink()
    assert prefetch.main([]) == 0  # everything, data under ./data
    assert len(downloads) == 2 and [c[0] for c in cifar_calls] == ["data", "data"]
    assert dinov2_calls == ["vit-l-14"]

    assert prefetch.main(["--dinov2", "vit-s-14"]) == 0
    assert dinov2_calls == ["vit-l-14", "vit-s-14"] and len(downloads) == 2


def test_dinov2_weights_go_where_fd_dinov2_looks_and_must_load(
    torch_home, monkeypatch, fake_dinov2_weights
):
    """The download is checked by loading it strictly into the architecture (DINOv2
    publishes no hash); a file that does not load is refused and not kept."""
    import shutil

    from sagan.metrics.dinov2 import default_weights_path as dinov2_path
    from sagan.metrics.dinov2 import resolve_dinov2_weights, weights_url

    urls = []

    def copy_download(url, dst, hash_prefix=None, progress=True):
        urls.append(url)
        shutil.copyfile(fake_dinov2_weights, dst)

    monkeypatch.setattr(prefetch, "download_url_to_file", copy_download)
    path = prefetch.fetch_dinov2("vit-s-14")
    assert path == torch_home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    assert path == dinov2_path("vit-s-14") and urls == [weights_url("vit-s-14")]
    assert (
        urls[0] == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    )
    assert resolve_dinov2_weights(None, "vit-s-14").path == path
    prefetch.fetch_dinov2("vit-s-14")
    assert len(urls) == 1  # already there and loadable: kept

    def bad_download(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(PAYLOAD)

    monkeypatch.setattr(prefetch, "download_url_to_file", bad_download)
    with pytest.raises(prefetch.PrefetchError, match="not a DINOv2 vit-b-14 checkpoint"):
        prefetch.fetch_dinov2("vit-b-14")
    assert not dinov2_path("vit-b-14").exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_cifar10_failure_is_explained(tmp_path, monkeypatch):
    import torchvision

    class Broken:
        base_folder = "cifar-10-batches-py"

        def __init__(self, *args, **kwargs):
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Broken)
    with pytest.raises(prefetch.PrefetchError, match="delete it and retry"):
        prefetch.fetch_cifar10(tmp_path)
    assert prefetch.main(["--data", "cifar10", "--root", str(tmp_path)]) == 1
