"""Storage: the same operations on local paths, file://, memory:// and a local S3 server;
atomic writes; retries on transient errors only."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from constellation.config import StorageConfig
from constellation.io import storage as storage_module
from constellation.io.storage import (
    Storage,
    StorageError,
    join_url,
    local_path,
    storage_from_config,
)

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every byte value, not block aligned


@pytest.fixture(params=["local", "file", "memory", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Storage, str]:  # (storage, base URL)
    kind = request.param
    if kind == "local":
        return Storage(base_delay_s=0.0), str(tmp_path / "root")
    if kind == "file":
        return Storage(base_delay_s=0.0), f"file://{tmp_path / 'root'}"
    if kind == "memory":
        return Storage(base_delay_s=0.0), f"memory://test-{uuid.uuid4().hex}"
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    # Writes need a signed client: credentials from the (dummy) AWS environment.
    return Storage(anon=False, endpoint_url=endpoint, base_delay_s=0.0), f"s3://{bucket}"


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bucket", ("q1", "MER/"), "s3://bucket/q1/MER"),
        ("s3://bucket/", ("/q1/",), "s3://bucket/q1"),
        ("memory://", ("a", "b"), "memory://a/b"),
        ("data/input", ("q1", "", "MER"), "data/input/q1/MER"),
        ("/abs", ("x/y",), "/abs/x/y"),
        ("", ("rel", "f.fits"), "rel/f.fits"),
    ],
)
def test_join_url(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join_url(base, *parts) == expected
    assert Storage().join(base, *parts) == expected


def test_local_path() -> None:
    assert local_path("data/x.fits") == Path("data/x.fits")
    assert local_path("file:///data/x.fits") == Path("/data/x.fits")
    assert local_path("s3://bucket/x.fits") is None
    assert local_path("memory://x") is None


def test_storage_from_config() -> None:
    s = storage_from_config(StorageConfig(anon=False, endpoint_url="http://127.0.0.1:9"))
    assert (s.anon, s.endpoint_url) == (False, "http://127.0.0.1:9")
    assert storage_from_config(StorageConfig()).anon is True
    tuned = StorageConfig(
        max_attempts=7, base_delay_s=0.5, max_delay_s=3.0, connect_timeout_s=2, read_timeout_s=5
    )
    t = storage_from_config(tuned)
    assert (t.max_attempts, t.base_delay_s, t.max_delay_s) == (7, 0.5, 3.0)
    config = t._options("s3")["config_kwargs"]
    assert (config["connect_timeout"], config["read_timeout"]) == (2, 5)
    assert storage_from_config(tuned, max_attempts=2).max_attempts == 2  # explicit wins


# --------------------------------------------------------------------------- every backend


def test_write_read_and_query(backend: tuple[Storage, str]) -> None:
    storage, base = backend
    url = storage.join(base, "dir/sub/data.bin")
    assert not storage.exists(url)
    storage.write_bytes(url, PAYLOAD)
    assert storage.exists(url)
    assert storage.read_bytes(url) == PAYLOAD
    assert storage.size(url) == len(PAYLOAD)
    info = storage.info(url)
    assert (info.url, info.size, info.type) == (url, len(PAYLOAD), "file")
    if base.startswith("s3://"):
        assert info.etag == hashlib.md5(PAYLOAD).hexdigest()  # single-PUT ETag, unquoted
    storage.write_bytes(url, b"replaced")
    assert storage.read_bytes(url) == b"replaced"
    assert storage.stats.bytes_written == len(PAYLOAD) + len(b"replaced")


def test_listing_returns_urls_of_the_same_scheme(backend: tuple[Storage, str]) -> None:
    storage, base = backend
    for name in ("d/a.fits", "d/b.fits", "d/c.txt", "d/e/f.fits"):
        storage.write_bytes(storage.join(base, name), b"x")
    d = storage.join(base, "d")
    listed = storage.ls(d)
    assert all(u.startswith(d + "/") for u in listed), listed
    assert [u.rsplit("/", 1)[1] for u in listed] == ["a.fits", "b.fits", "c.txt", "e"]
    globbed = storage.glob(storage.join(d, "*.fits"))
    assert [u.rsplit("/", 1)[1] for u in globbed] == ["a.fits", "b.fits"]
    # URLs returned are usable as they are
    assert storage.read_bytes(globbed[0]) == b"x"
    assert storage.exists(storage.join(base, "d/e"))
    assert storage.info(storage.join(base, "d/e")).type == "directory"
    # hidden names, folders and several levels: the same answer on every store
    for name in ("g/.h/x.fits", "g/i/x.fits", "g/i/.x.fits", "g/j/k/x.fits"):
        storage.write_bytes(storage.join(base, name), b"x")
    g = storage.join(base, "g")
    tails = [u[len(g) + 1 :] for u in storage.glob(storage.join(g, "*", "*.fits"))]
    assert tails == [".h/x.fits", "i/.x.fits", "i/x.fits"]
    assert [u[len(g) + 1 :] for u in storage.glob(storage.join(g, "?"))] == ["i", "j"]
    deep = [u[len(g) + 1 :] for u in storage.glob(storage.join(g, "**", "x.fits"))]
    assert "j/k/x.fits" in deep


def test_read_bytes_and_inode(backend: tuple[Storage, str]) -> None:
    storage, base = backend
    url = storage.join(base, "r/data.bin")
    storage.write_bytes(url, PAYLOAD)
    data, inode = storage.read_bytes_and_inode(url)
    assert data == PAYLOAD
    local = local_path(url)
    if local is None:
        assert inode is None
    else:
        stat = os.stat(local)
        assert inode == (stat.st_dev, stat.st_ino)
    assert storage.stats.bytes_read == len(PAYLOAD)


def test_read_range_reads_exactly_the_requested_bytes(backend: tuple[Storage, str]) -> None:
    storage, base = backend
    url = storage.join(base, "ranged.bin")
    storage.write_bytes(url, PAYLOAD)
    storage.stats.reset()
    for start, end in [(0, 1), (100, 2980), (2880, 5760), (10000, 10244)]:
        assert storage.read_range(url, start, end) == PAYLOAD[start:end]
    assert storage.stats.requests == 4
    assert storage.stats.bytes_read == 1 + 2880 + 2880 + 244
    # past the end: what there is, then nothing
    assert storage.read_range(url, 10200, 20000) == PAYLOAD[10200:]
    assert storage.read_range(url, len(PAYLOAD), len(PAYLOAD) + 10) == b""
    assert storage.read_range(url, 50_000, 60_000) == b""
    assert storage.read_range(url, 5, 5) == b""
    with pytest.raises(ValueError, match="start <= end"):
        storage.read_range(url, 10, 5)


def test_open_streams_with_seek(backend: tuple[Storage, str]) -> None:
    storage, base = backend
    url = storage.join(base, "stream.bin")
    storage.write_bytes(url, PAYLOAD)
    storage.stats.reset()
    with storage.open(url, "rb", block_size=1000) as f:
        assert f.read(10) == PAYLOAD[:10]
        f.seek(5000)
        assert f.read(3000) == PAYLOAD[5000:8000]
        f.seek(-4, os.SEEK_END)
        assert f.read() == b"tail"
        assert f.read() == b""
    assert storage.stats.bytes_read < len(PAYLOAD)  # only what was read (+ buffer fill)
    text_url = storage.join(base, "lines.txt")
    storage.write_bytes(text_url, "\u00e9t\u00e9\nno\u00ebl\n".encode())
    with storage.open(text_url, "r") as t:
        assert t.read().splitlines() == ["\u00e9t\u00e9", "no\u00ebl"]
    with pytest.raises(ValueError, match="mode"):
        storage.open(url, "wb")


def test_missing_file_errors_name_the_url_and_are_not_retried(
    backend: tuple[Storage, str],
) -> None:
    storage, base = backend
    url = storage.join(base, "nope/missing.fits")
    for op in (storage.read_bytes, storage.size, storage.ls):
        storage.stats.reset()
        with pytest.raises(FileNotFoundError) as excinfo:
            op(url)
        assert url in str(excinfo.value)
        assert storage.stats.requests == 1
    with pytest.raises(FileNotFoundError, match=r"missing\.fits"):
        storage.read_range(url, 0, 10)
    assert storage.glob(storage.join(base, "nope/*.fits")) == []


def test_makedirs_and_rm(backend: tuple[Storage, str]) -> None:
    storage, base = backend
    storage.makedirs(storage.join(base, "made/here"))
    url = storage.join(base, "made/here/f.bin")
    storage.write_bytes(url, b"1")
    storage.rm(url)
    assert not storage.exists(url)
    storage.rm(url, missing_ok=True)
    with pytest.raises(FileNotFoundError):
        storage.rm(url)
    storage.write_bytes(storage.join(base, "tree/a/b.bin"), b"2")
    storage.rm(storage.join(base, "tree"), recursive=True)
    assert not storage.exists(storage.join(base, "tree/a/b.bin"))


# --------------------------------------------------------------------------- S3 specifics


def test_anonymous_reads_from_a_public_bucket(
    tmp_path: Path,
    s3_bucket: str,
    upload_tree: Callable[..., list[str]],
    anon_s3_storage: Storage,
    s3_endpoint: str,
) -> None:
    (tmp_path / "tree/VIS").mkdir(parents=True)
    (tmp_path / "tree/VIS/x.fits").write_bytes(PAYLOAD)
    (tmp_path / "tree/top.txt").write_bytes(b"top")
    keys = upload_tree(tmp_path / "tree", s3_bucket, "q1/MER")
    assert keys == ["q1/MER/VIS/x.fits", "q1/MER/top.txt"]
    storage = anon_s3_storage
    root = f"s3://{s3_bucket}/q1/MER"
    assert storage.ls(root) == [f"{root}/VIS", f"{root}/top.txt"]
    url = f"{root}/VIS/x.fits"
    assert storage.read_range(url, 2880, 5760) == PAYLOAD[2880:5760]
    assert storage.stats.bytes_read == 2880
    assert storage.read_bytes(url) == PAYLOAD
    # the filesystem really is anonymous, on the local endpoint, and shared per options
    fs = storage._filesystem("s3")
    assert fs.anon is True
    assert fs.endpoint_url == s3_endpoint
    assert Storage(anon=True, endpoint_url=s3_endpoint)._filesystem("s3") is fs
    assert Storage(anon=False, endpoint_url=s3_endpoint)._filesystem("s3") is not fs


def test_missing_bucket_is_file_not_found(anon_s3_storage: Storage) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here"):
        anon_s3_storage.read_bytes("s3://no-such-bucket-here/key")


def test_connection_refused_is_retried_then_reported() -> None:
    sleeps: list[float] = []
    # nothing listens on port 1: every attempt is refused at once, never leaving 127.0.0.1
    storage = Storage(
        endpoint_url="http://127.0.0.1:1", max_attempts=3, base_delay_s=0.01, sleep=sleeps.append
    )
    with pytest.raises(StorageError, match=r"s3://bucket/key failed after 3 attempts") as excinfo:
        storage.read_range("s3://bucket/key", 0, 10)
    assert excinfo.value.url == "s3://bucket/key"
    assert storage.stats.requests == 3
    assert storage.stats.retries == 2
    assert len(sleeps) == 2


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    storage = Storage()
    target = tmp_path / "out" / "registry.parquet"
    storage.write_bytes(str(target), PAYLOAD)
    storage.write_bytes(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["registry.parquet"]


class _HalfWriter:
    """A file whose write puts half the data on disk and then fails (disk full)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def write(self, data: bytes) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_write_keeps_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(base_delay_s=0.0)
    target = tmp_path / "data.bin"
    storage.write_bytes(str(target), b"old content")
    real_fdopen = os.fdopen
    half_written: list[int] = []

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        half_written.append(fd)
        return _HalfWriter(real_fdopen(fd, mode, *args, **kwargs))

    monkeypatch.setattr(storage_module.os, "fdopen", fdopen)
    storage.stats.reset()
    with pytest.raises(StorageError, match=r"data\.bin") as excinfo:
        storage.write_bytes(str(target), PAYLOAD)
    assert "No space left" in str(excinfo.value)
    assert half_written  # the failure did happen mid-write
    assert storage.stats.requests == 1  # disk full is not transient
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["data.bin"]
    # a new file that fails is never created at all
    with pytest.raises(StorageError):
        storage.write_bytes(str(tmp_path / "new.bin"), PAYLOAD)
    assert os.listdir(tmp_path) == ["data.bin"]


def test_failure_before_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(base_delay_s=0.0)
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def boom(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(storage_module.os, "fsync", boom)
    with pytest.raises(StorageError, match="I/O error"):
        storage.write_bytes(str(target), PAYLOAD)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


# --------------------------------------------------------------------------- retries


class _FakeClientError(Exception):
    """Shaped like botocore's ClientError: a ``response`` dict with an error code."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class EndpointConnectionError(Exception):
    """Named like botocore's: matched by class name."""


def _s3_translated(code: str, status: int, err: int) -> OSError:
    """What s3fs raises for a ClientError it maps to an errno: an OSError caused by it."""
    exc = OSError(err, f"s3 said {code}")
    exc.__cause__ = _FakeClientError(code, status)
    return exc


class _FlakyFS:
    """A fake filesystem whose reads fail with the given exceptions before succeeding."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.calls = 0

    @staticmethod
    def _strip_protocol(url: str) -> str:
        return url.split("://", 1)[-1]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return PAYLOAD[start:end]


def _flaky_storage(
    monkeypatch: pytest.MonkeyPatch, failures: list[BaseException], **kwargs: Any
) -> tuple[Storage, _FlakyFS, list[float]]:
    sleeps: list[float] = []
    storage = Storage(sleep=sleeps.append, **kwargs)
    fs = _FlakyFS(failures)
    monkeypatch.setattr(storage, "_filesystem", lambda protocol: fs)
    return storage, fs, sleeps


@pytest.mark.parametrize(
    "transient",
    [
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        TimeoutError("read timed out"),
        EndpointConnectionError("Could not connect to the endpoint URL"),
        _s3_translated("SlowDown", 503, errno.EBUSY),
        _s3_translated("InternalError", 500, errno.EIO),
        _FakeClientError("Throttling", 400),
    ],
    ids=["reset", "timeout", "endpoint", "slowdown", "500", "throttling"],
)
def test_transient_errors_are_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch, transient: BaseException
) -> None:
    storage, fs, sleeps = _flaky_storage(
        monkeypatch, [transient, transient], base_delay_s=0.1, max_delay_s=10.0
    )
    assert storage.read_range("s3://b/k", 0, 100) == PAYLOAD[:100]
    assert fs.calls == 3
    assert (storage.stats.requests, storage.stats.retries) == (3, 2)
    assert storage.stats.bytes_read == 100
    assert len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1  # base delay, jittered down by at most half
    assert 0.1 <= sleeps[1] <= 0.2  # doubled


@pytest.mark.parametrize(
    ("permanent", "raised"),
    [
        (FileNotFoundError("k"), FileNotFoundError),
        (PermissionError("denied"), PermissionError),
        (_s3_translated("InvalidArgument", 400, errno.EINVAL), StorageError),
        (ValueError("bad"), StorageError),
    ],
    ids=["missing", "permission", "400", "other"],
)
def test_permanent_errors_are_not_retried(
    monkeypatch: pytest.MonkeyPatch, permanent: BaseException, raised: type[Exception]
) -> None:
    storage, fs, sleeps = _flaky_storage(monkeypatch, [permanent])
    with pytest.raises(raised) as excinfo:
        storage.read_range("s3://bucket/some/key.fits", 0, 10)
    assert "s3://bucket/some/key.fits" in str(excinfo.value)
    assert fs.calls == 1
    assert sleeps == []
    assert storage.stats.requests == 1


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[BaseException] = [TimeoutError("slow")] * 10
    storage, fs, sleeps = _flaky_storage(monkeypatch, errors, base_delay_s=1.0, max_delay_s=1.5)
    with pytest.raises(StorageError, match=r"s3://b/k failed after 4 attempts: TimeoutError"):
        storage.read_range("s3://b/k", 0, 10)
    assert fs.calls == 4
    assert len(sleeps) == 3
    assert max(sleeps) <= 1.5  # capped by max_delay_s
    storage, fs, sleeps = _flaky_storage(monkeypatch, errors, max_attempts=1)
    with pytest.raises(StorageError):
        storage.read_range("s3://b/k", 0, 10)
    assert (fs.calls, sleeps) == (1, [])


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Storage(max_attempts=0)
    with pytest.raises(ValueError, match="delay"):
        Storage(base_delay_s=-1)


def test_local_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    Storage().write_bytes(str(tmp_path / "f.bin"), b"x")
    mode = stat.S_IMODE((tmp_path / "f.bin").stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
