"""The two sites a latent store can live on, for store tests that run on both: a local directory
and a ``memory://`` root (the remote site, on fsspec's in-process memory filesystem).

``places(name)`` makes a store location of the test's site; ``place`` is one named "store". Each
``Place.open()`` is another handle on that store: on a local directory another process (sharing
the index in the directory), on ``memory://`` another host (with an index of its own, so that it
learns everything from the objects). A test about one site's own layout runs there alone, saying
why (``local_only``). ``test_store_remote.py`` runs the remote site against a real S3 API too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest

from prefect_acestep.stages.store import LatentStore, journal

SITES = ["local", "memory"]


@dataclass
class Place:
    """A store's root and raw access to what lies under it (to look at, or damage, behind the
    store's back) through fsspec, for both sites alike."""

    kind: str
    root: str | Path
    fs: Any
    base: str
    around: str
    """Where everything the store could write lies: its parent directory, or the memory filesystem."""
    opened: list[LatentStore] = field(default_factory=list)

    def open(self, **kwargs: Any) -> LatentStore:
        store = LatentStore(self.root, **kwargs)
        self.opened.append(store)
        return store

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def size(self, rel: str) -> int:
        return self.fs.size(self.path(rel))

    def names(self, rel_dir: str) -> list[str]:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel_dir), detail=False))
        except FileNotFoundError:
            return []

    def everything(self) -> set[str]:
        return set(self.fs.find(self.around))

    def journal_rel(self) -> str:
        """Where the first journal append lands (one file locally, one object per append remotely)."""
        return "journal.jsonl" if self.kind == "local" else journal.segment_rel(1)

    def journal_lines(self) -> list[bytes]:
        """Every line of the journal, in order, whatever its layout."""
        if self.kind == "local":
            return self.read("journal.jsonl").splitlines() if self.exists("journal.jsonl") else []
        segments = self.names(journal.SEGMENTS_DIR)
        return [line for name in segments for line in self.read(f"{journal.SEGMENTS_DIR}/{name}").splitlines()]

    def wipe_journal(self) -> None:
        if self.kind == "local":
            self.write("journal.jsonl", b"")
        else:
            self.fs.rm(self.path(journal.SEGMENTS_DIR), recursive=True)

    def forget_index(self) -> None:
        """Make the next ``open`` rebuild its index from the files and the journal: remove the local
        index file (a ``memory://`` store's index lives and dies with each handle anyway)."""
        if self.kind == "local":
            for suffix in ("", "-wal", "-shm"):
                Path(self.root, f"index.sqlite3{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.kind == "memory" and self.fs.exists(self.base):
            self.fs.rm(self.base, recursive=True)


@pytest.fixture(params=SITES)
def site_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def places(site_kind: str, tmp_path: Path) -> Iterator[Callable[[str], Place]]:
    made: list[Place] = []

    def make(name: str) -> Place:
        if site_kind == "local":
            place = Place("local", tmp_path / name, fsspec.filesystem("file"), str(tmp_path / name), str(tmp_path))
        else:
            unique = f"{name}-{secrets.token_hex(6)}"
            place = Place("memory", f"memory://{unique}", fsspec.filesystem("memory"), f"/{unique}", "/")
        made.append(place)
        return place

    yield make
    for place in made:
        place.close()


@pytest.fixture
def place(places: Callable[[str], Place]) -> Place:
    return places("store")


def local_only(reason: str) -> pytest.MarkDecorator:
    """Run a test on the local site alone, for ``reason`` (a property of that site's layout)."""
    return pytest.mark.parametrize("site_kind", ["local"], ids=["local"])
