"""Where everything lives under a region folder: the one place those paths are spelled.

```
REGION/region.toml        the manifest            REGION/models/<kind>/<name>-<version>/
REGION/build/             what `prepare` writes    REGION/reports/<kind>/<run_id>/
REGION/maps/              `map susceptibility`     REGION/cache/   block stores, tile cache
```
docs/ARCHITECTURE.md ("A region folder") says what each file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemap.compute.terrain.factors import FACTORS_JSON

MANIFEST = "region.toml"
BUILD_DIR = "build"
# What slidemap's commands write that a user takes away (README: "Where outputs land"), as
# (group, glob under the region, what it is); never a recursive walk: the tile cache is huge
OUTPUT_PATTERNS = (
    ("Maps", "maps/*.tif", "GeoTIFF (COG)"),
    ("Maps", "maps/*.qml", "QGIS style"),
    ("Maps", "maps/*.sld", "SLD style"),
    ("Maps", "maps/*_classes.json", "class areas and landslide shares"),
    ("Maps", "maps/*.tif.aux.xml", "class names (GDAL)"),
    ("Inventories", "build/inventory.gpkg", "known inventory (points, polygons; styled)"),
    ("Inventories", "reports/inventory/*/landslides_detected.gpkg", "detected landslides (styled)"),
    ("Inventories", "reports/inventory/*/*.tif", "detection probability"),
    ("Tile archives", "*.mbtiles", "MBTiles"),
    ("Tile archives", "maps/*.mbtiles", "MBTiles"),
    ("Tile archives", "*.pmtiles", "PMTiles"),
    ("Tile archives", "maps/*.pmtiles", "PMTiles"),
    ("Reports", "reports/*/*/report.json", "report (JSON)"),
    ("Reports", "reports/*/*/report.md", "report (Markdown)"),
)


@dataclass(frozen=True)
class RegionLayout:
    root: Path

    @classmethod
    def of(cls, region_dir: str | Path) -> RegionLayout:
        return cls(Path(region_dir))

    # the manifest and what `prepare` builds -----------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def build(self) -> Path:
        return self.root / BUILD_DIR

    @property
    def factors_tif(self) -> Path:
        return self.build / "factors.tif"

    @property
    def factors_json(self) -> Path:
        return self.build / FACTORS_JSON

    @property
    def imagery_tif(self) -> Path:
        return self.build / "imagery.tif"

    @property
    def hillshade_tif(self) -> Path:
        return self.build / "hillshade.tif"

    @property
    def labels_tif(self) -> Path:
        return self.build / "labels.tif"

    @property
    def labels_imagery_tif(self) -> Path:
        return self.build / "labels_imagery.tif"

    @property
    def exclusion_imagery_tif(self) -> Path:
        return self.build / "exclusion_imagery.tif"

    @property
    def inventory_gpkg(self) -> Path:
        return self.build / "inventory.gpkg"

    @property
    def detected_fallback_gpkg(self) -> Path:
        """Where a detected inventory is looked for when no inventory run wrote one."""
        return self.build / "detected.gpkg"

    def vector(self, theme: str) -> Path:
        return self.build / "vectors" / f"{theme}.gpkg"

    def part(self, factor: str) -> Path:
        return self.build / "parts" / f"{factor}.tif"

    def native(self, factor: str) -> Path:
        return self.build / "native" / f"{factor}.tif"

    # what training, mapping and serving write ----------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report_dir(self, kind: str, run_id: str) -> Path:
        return self.reports / kind / run_id

    @property
    def inventory_runs(self) -> Path:
        return self.reports / "inventory"

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    @property
    def cache(self) -> Path:
        return self.root / "cache"
