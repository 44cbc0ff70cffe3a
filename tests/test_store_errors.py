"""Storage failures are typed where storage is touched, and the retry rule follows the type alone: a
full disk or a permission error fails at once, naming the path and what to do; a network blip on a
remote store is retried.

The failures are real: a small tmpfs filled up, a file-size limit (``RLIMIT_FSIZE``), a filesystem
remounted read-only, a user without write access, and an S3 server (moto on 127.0.0.1) behind a
proxy that drops connections or answers with errors. Mounting needs root; where the tests run
without it, those tests skip and say so (the file-size limit and the proxy need nothing).
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import s3fs
import torch

from prefect_acestep.stages.errors import (
    StorageError,
    StorageFull,
    StoragePermission,
    StorageUnavailable,
)
from prefect_acestep.stages.storage_errors import storage_error
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.store.files import LATENTS_DIR
from prefect_acestep.stages.store.index import ACCESS_FLUSH_S
from prefect_acestep.tasks.retries import is_transient
from tests.faulty_proxy import FaultyProxy, faulty_proxy
from tests.s3_server import DUMMY_AWS_ENV, new_bucket, s3_server

ROOT = Path(__file__).resolve().parents[1]


def latent(frames: int = 500, seed: int = 0) -> torch.Tensor:
    """[1, frames, 64] float32: 128 KiB at the default size."""
    return torch.randn(1, frames, 64, generator=torch.Generator().manual_seed(seed))


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["mount", *args], capture_output=True, text=True)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(["mount"], 127, "", str(exc))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own, so that filling it fills nothing else."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount))
    if done.returncode != 0:
        pytest.skip(f"mounting a 1 MiB tmpfs needs root (CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def staging_left(root: Path) -> list[str]:
    return [name for name in os.listdir(root / LATENTS_DIR) if name.startswith(".")]


# --- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_is_storage_full_fails_fast_and_leaves_nothing_half_written(small_tmpfs: Path) -> None:
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * 384 * 1024)  # someone else's file, removed below to free space
    store = LatentStore(small_tmpfs / "store")
    stored: list[str] = []
    with pytest.raises(StorageFull) as caught:
        for seed in range(20):  # 20 x 128 KiB cannot fit in 1 MiB
            stored.append(store.put(latent(seed=seed), stage_type="generate"))
    error = caught.value
    assert stored, "some latents must fit before the disk is full"
    assert error.path.startswith(str(small_tmpfs / "store")) and error.path in str(error)
    assert "No space left on device" in str(error) and "free space there" in str(error)
    assert not is_transient(error)
    assert staging_left(small_tmpfs / "store") == []
    assert sorted(r.id for r in store.list()) == sorted(stored)

    ballast.unlink()  # freeing space is all it takes
    for seed, latent_id in enumerate(stored):
        assert torch.equal(store.get(latent_id), latent(seed=seed))
    assert torch.equal(store.get(store.put(latent(seed=99), stage_type="generate")), latent(seed=99))


def fill(mount: Path) -> Path:
    """Fill the filesystem to the last byte with a ballast file; return it."""
    ballast = mount / "ballast-to-the-brim"
    with ballast.open("wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return ballast


def test_reads_never_need_a_write_and_lru_order_survives_a_full_disk(small_tmpfs: Path) -> None:
    """Before: every get wrote an access time into the index, so on a full disk every read failed
    with "database or disk is full". Reads now succeed; the accesses they made stay in memory and
    reach the index once there is room, so LRU eviction still sees them."""
    store = LatentStore(small_tmpfs / "store", max_bytes=200 * 1024)
    older = store.put(latent(seed=1), stage_type="generate")
    newer = store.put(latent(seed=2), stage_type="generate")
    ballast = fill(small_tmpfs)
    with pytest.raises(StorageFull):
        store.put(latent(seed=3), stage_type="generate")
    assert store.get_extras(newer) == {}
    for _ in range(2):  # the second read comes after the batching interval: it tries to write, and fails
        time.sleep(ACCESS_FLUSH_S + 0.1)
        assert torch.equal(store.get(older), latent(seed=1))
    assert [r.id for r in store.list()] == [newer, older] and store.exists(older)
    ballast.unlink()  # room again: gc writes the pending accesses first, so the read of older counts
    report = store.gc()
    assert [removed.id for removed in report.removed] == [newer]
    assert torch.equal(store.get(older), latent(seed=1))


FILE_SIZE_LIMITED_WRITER = """
import resource, signal, sys, torch
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.retries import is_transient
store = LatentStore(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
try:
    store.put(torch.zeros(1, 6000, 64), stage_type="generate")  # 1.5 MB
except Exception as exc:
    print(type(exc).__name__, is_transient(exc), exc, sep="|")
"""


def test_a_file_size_limit_is_storage_full_too(tmp_path: Path) -> None:
    """Runs anywhere (no root needed): a process whose files may not grow past 256 KiB."""
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED_WRITER, str(tmp_path / "store")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    kind, transient, message = done.stdout.strip().splitlines()[-1].split("|", 2)
    assert (kind, transient) == ("StorageFull", "False")
    assert str(tmp_path / "store") in message and "File too large" in message
    assert staging_left(tmp_path / "store") == []


# --- no permission -------------------------------------------------------------------------------


@contextmanager
def read_only_view(path: Path) -> Iterator[None]:
    """Make ``path`` read-only in place (a read-only bind mount of itself): writes through it fail
    with EROFS, even for root, while the rest of its filesystem stays writable."""
    done = _mount("--bind", str(path), str(path))
    if done.returncode != 0:
        pytest.skip(f"a read-only bind mount needs root (CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        done = _mount("-o", "remount,bind,ro", str(path))
        assert done.returncode == 0, done.stderr
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_filesystem_is_storage_permission_and_fails_fast(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LatentStore(root)
    kept = store.put(latent(frames=8), stage_type="generate")
    with read_only_view(root / LATENTS_DIR):  # while the store is open
        with pytest.raises(StoragePermission) as caught:
            store.put(latent(frames=8, seed=1), stage_type="generate")
        assert caught.value.path.startswith(str(root / LATENTS_DIR))
        assert "Read-only file system" in str(caught.value) and "a read-only mount" in str(caught.value)
        assert not is_transient(caught.value)
        assert torch.equal(store.get(kept), latent(frames=8))
    store.close()
    with read_only_view(root), pytest.raises(StoragePermission) as caught:  # a store on a read-only mount
        LatentStore(root)
    assert caught.value.path.startswith(str(root)) and not is_transient(caught.value)
    assert [r.id for r in LatentStore(root).list()] == [kept]


UNPRIVILEGED_WRITER = """
import sys, torch
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.retries import is_transient
try:
    LatentStore(sys.argv[1]).put(torch.zeros(1, 8, 64), stage_type="generate")
except Exception as exc:
    print(type(exc).__name__, is_transient(exc), exc, sep="|")
"""


def test_a_store_this_user_may_not_write_is_storage_permission(tmp_path: Path) -> None:
    """Root ignores permission bits. As root the store belongs to ``nobody`` and the writer runs
    without the capabilities that override permissions (``setpriv``); as anyone else the store's
    directories are made read-only for their owner."""
    root = tmp_path / "store"
    LatentStore(root).close()
    command = [sys.executable, "-c", UNPRIVILEGED_WRITER, str(root)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root this test needs util-linux's setpriv to drop CAP_DAC_OVERRIDE")
        for path in (root, *root.rglob("*")):
            os.chown(path, 65534, 65534)
        overrides = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={overrides}", f"--inh-caps={overrides}", "--", *command]
    else:
        for path in (root, root / LATENTS_DIR):
            path.chmod(0o555)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        for path in (root, root / LATENTS_DIR):
            path.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, transient, message = done.stdout.strip().splitlines()[-1].split("|", 2)
    assert (kind, transient) == ("StoragePermission", "False"), message
    assert str(root) in message and "Permission denied" in message
    assert os.listdir(root / LATENTS_DIR) == []


# --- a remote store's server fails ---------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_AWS_ENV.items():
            patch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        with s3_server() as url:
            yield url


@pytest.fixture
def proxied(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LatentStore, FaultyProxy]]:
    """A store on a fresh bucket, reached through a proxy that fails on demand. s3fs and botocore
    each retry a failed request several times themselves (seconds of backoff); one attempt each
    keeps the test short and shows what reaches the store once theirs are spent."""
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    with faulty_proxy(endpoint) as proxy:
        options = {"endpoint_url": proxy.url, "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        store = LatentStore(
            f"s3://{new_bucket(endpoint)}/store", storage_options=options, index_dir=tmp_path / "index", lock_timeout_s=5
        )
        yield store, proxy
        store.close()


def _operations(store: LatentStore, kept: str) -> dict[str, Any]:
    return {
        "put": lambda: store.put(latent(frames=8, seed=1), stage_type="generate"),
        "get": lambda: store.get(kept),
        "pin": lambda: store.pin(kept),
        "list": lambda: store.list(),
        "gc": lambda: store.gc(),
    }


@pytest.mark.parametrize("fault", ["reset", 503, 500], ids=["connection-reset", "503-slow-down", "500-internal"])
def test_a_network_blip_on_a_remote_store_is_storage_unavailable_and_retried(
    proxied: tuple[LatentStore, FaultyProxy], fault: str | int
) -> None:
    store, proxy = proxied
    kept = store.put(latent(frames=8), stage_type="generate")
    proxy.fault = fault
    for name, operation in _operations(store, kept).items():
        with pytest.raises(StorageUnavailable) as caught:
            operation()
        assert caught.value.path.startswith(str(store.root)), (name, caught.value)
        assert is_transient(caught.value), name
    assert proxy.failed > 0
    proxy.fault = None  # the blip passes: every operation works again, and nothing was half done
    assert [r.id for r in store.list()] == [kept]
    store.pin(kept)
    assert store.record(kept).pinned and torch.equal(store.get(kept), latent(frames=8))


def test_access_denied_by_a_remote_store_is_storage_permission_and_fails_fast(
    proxied: tuple[LatentStore, FaultyProxy],
) -> None:
    store, proxy = proxied
    kept = store.put(latent(frames=8), stage_type="generate")
    proxy.fault = 403
    for name, operation in _operations(store, kept).items():
        with pytest.raises(StoragePermission) as caught:
            operation()
        assert "credentials and policy" in str(caught.value), name
        assert not is_transient(caught.value), name


# --- the rule itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), StorageFull),
        (OSError(errno.EFBIG, "File too large"), StorageFull),
        (PermissionError(errno.EACCES, "Permission denied"), StoragePermission),
        (PermissionError(errno.EPERM, "Operation not permitted"), StoragePermission),
        (OSError(errno.EROFS, "Read-only file system"), StoragePermission),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), StorageUnavailable),
        (TimeoutError("timed out"), StorageUnavailable),
        (OSError(errno.EIO, "Input/output error"), StorageUnavailable),
        (OSError(errno.EISDIR, "Is a directory"), StorageError),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StorageUnavailable),
        (botocore.exceptions.NoCredentialsError(), StoragePermission),
    ],
)
def test_an_untyped_os_error_is_judged_as_the_boundary_would(raised: Exception, kind: type[StorageError]) -> None:
    """The one translation, and an error raised where no boundary typed it (inside a backend, say)
    judged by it for the retry decision: only what may pass is retried."""
    error = storage_error(raised, "/data/store")
    assert type(error) is kind and error.path == "/data/store" and error.path in str(error)
    assert is_transient(raised) == issubclass(kind, StorageUnavailable)


def test_storage_errors_survive_pickling() -> None:
    """Prefect pickles a failed task's exception into its state."""
    for kind in (StorageError, StorageFull, StoragePermission, StorageUnavailable):
        error = kind("/data/store/latents/x.safetensors", "No space left on device")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is kind and str(again) == str(error) and again.path == error.path
