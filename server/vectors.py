"""The region's landslide inventories as GeoJSON for web maps (known landslides, known
non-landslides, detected polygons), in WGS84, styled apart by the map page.

Read once per file version (size and mtime) and kept; bounded by :data:`MAX_FEATURES` (beyond it the
answer is a 422 that points at the GeoPackage itself, which GIS clients open directly).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from slidemap.compute.region.inventory_layers import read_inventory
from slidemap.server.errors import NotFound, OverBudget

MAX_FEATURES = 50_000
SOURCES = ("known", "detected")


class InventoryVectors:
    def __init__(self, registry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], bytes]] = {}

    def path_of(self, source: str) -> Path:
        if source == "known":
            return self.registry.layout.inventory_gpkg
        return self.registry._detected_source()

    def geojson(self, source: str) -> bytes:
        if source not in SOURCES:
            raise NotFound(f"inventory source {source!r}: use one of {', '.join(SOURCES)}")
        path = self.path_of(source)
        try:
            st = os.stat(path)
        except OSError:
            raise NotFound(f"no {source} inventory in this region (run `slidemap "
                           f"{'prepare' if source == 'known' else 'inventory'}` on it)") from None
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit[0] == stamp:
                return hit[1]
        body = self._read(path, source)
        with self._lock:
            self._cache[path] = (stamp, body)
        return body

    def _read(self, path: Path, source: str) -> bytes:
        frame = read_inventory(path)
        if len(frame) > MAX_FEATURES:
            raise OverBudget(f"the {source} inventory has {len(frame):,} features, more than a web map should "
                             f"draw ({MAX_FEATURES:,}); open {self.registry.rel(path)} in a GIS instead")
        frame = frame.to_crs("EPSG:4326") if frame.crs is not None else frame
        if "label" in frame.columns:
            frame["label"] = frame["label"].astype(bool)
        else:
            frame["label"] = True
        frame["source"] = source
        keep = [c for c in ("label", "source", "id", "area", "mean_probability") if c in frame.columns]
        data: dict[str, Any] = json.loads(frame[[*keep, "geometry"]].to_json(drop_id=True))
        data["synthetic"] = bool(self.registry.synthetic)
        return json.dumps(data, separators=(",", ":")).encode()
