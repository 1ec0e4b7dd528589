"""Rendered-tile cache: a file tree with a size limit and least-recently-used eviction.

Keys are built from everything that changes a tile's bytes: layer id, data version (model
version and input fingerprint), canonical render parameters, tile matrix set, z/x/y, scale and
format. A new model version is a new key, so old tiles are never served for it; they age out
through LRU eviction. Writes go to a temporary file and are renamed into place, so a reader (or a
crash) never sees half a tile. The ETag is the SHA-256 of the tile bytes, stored beside nothing:
it is recomputed on read (tiles are small, hashing them costs microseconds).

A cache that cannot be written (read-only folder, full disk) never fails a request: the tile
that was just rendered is served uncached, the first failure is logged and reported by
``stats()["problem"]`` (``/health`` shows it), and writes are retried after a minute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from slidemap.compute.maps.blocks import short_error
from slidemap.compute.region.raster_io import write_bytes_atomic

log = logging.getLogger(__name__)


def etag_for(content: bytes) -> str:
    return '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class TileKey:
    layer: str
    data_version: str
    params: str  # canonical query string of render parameters
    tms: str
    z: int
    x: int
    y: int
    scale: int
    fmt: str

    def relpath(self) -> str:
        # Layer ids come from the fixed registry ("factors/slope"); '/' becomes '~' so one layer is one folder.
        layer = self.layer.replace("/", "~")
        phash = hashlib.sha256(self.params.encode()).hexdigest()[:16]
        return f"{layer}/{self.data_version}/{phash}/{self.tms}/{self.z}/{self.x}/{self.y}@{self.scale}x.{self.fmt}"


class TileCache:
    """File-tree tile cache with an LRU size limit (``max_bytes``; 0 disables caching)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # relpath -> size, oldest first
        self._total = 0
        self.hits = 0
        self.misses = 0
        self.write_errors = 0
        self.problem: str | None = None  # why writes fail, while they do
        self._retry_at = 0.0
        try:
            self._scan()
        except OSError as exc:  # an unreadable cache folder: start empty, serve uncached
            self._write_failed(exc)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def total_bytes(self) -> int:
        return self._total

    def _scan(self) -> None:
        """Rebuild the LRU index from the tree (recency = file mtime, refreshed on every hit)."""
        if not self.root.is_dir():
            return
        entries = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                st = path.stat()
                entries.append((st.st_mtime_ns, path.relative_to(self.root).as_posix(), st.st_size))
            elif path.is_file() and path.name.startswith("."):
                try:
                    path.unlink(missing_ok=True)  # a temp file left by a crash
                except OSError:
                    pass
        for _, rel, size in sorted(entries):
            self._index[rel] = size
            self._total += size
        self._evict()

    def get(self, key: TileKey) -> bytes | None:
        if not self.enabled:
            return None
        rel = key.relpath()
        path = self.root / rel
        try:
            data = path.read_bytes()
        except OSError:
            with self._lock:
                self.misses += 1
                if rel in self._index:  # removed behind our back
                    self._total -= self._index.pop(rel)
            return None
        with self._lock:
            self.hits += 1
            if rel in self._index:
                self._index.move_to_end(rel)
        try:
            os.utime(path)  # recency survives a restart
        except OSError:
            pass
        return data

    def put(self, key: TileKey, content: bytes) -> bool:
        """Store a tile; False (and the tile is simply not cached) when the cache cannot be written."""
        if not self.enabled or len(content) > self.max_bytes:
            return False
        if self.problem is not None and time.monotonic() < self._retry_at:
            return False
        rel = key.relpath()
        try:
            write_bytes_atomic(self.root / rel, content)
        except OSError as exc:
            self._write_failed(exc)
            return False
        if self.problem is not None:
            log.warning("tile cache %s is writable again", self.root)
            self.problem = None
        with self._lock:
            if rel in self._index:
                self._total -= self._index.pop(rel)
            self._index[rel] = len(content)
            self._total += len(content)
        self._evict()
        return True

    def _write_failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self._retry_at = time.monotonic() + 60.0
        if self.problem is None:  # logged once per outage
            self.problem = f"tile cache not writable ({short_error(exc)}); tiles are served uncached"
            log.warning("%s: %s", self.root, self.problem)

    def _evict(self) -> None:
        with self._lock:
            victims = []
            while self._total > self.max_bytes and self._index:
                rel, size = self._index.popitem(last=False)
                self._total -= size
                victims.append(rel)
        for rel in victims:
            try:
                (self.root / rel).unlink(missing_ok=True)
            except OSError:
                pass  # a read-only cache keeps its files; the index no longer counts them
        if victims:
            log.debug("tile cache evicted %d tiles", len(victims))

    def stats(self) -> dict[str, int | str | None]:
        return {
            "tiles": len(self._index),
            "bytes": self._total,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "write_errors": self.write_errors,
            "problem": self.problem,
        }
