"""Downloads: every output of the region, one button each (maps, styles, inventories, reports).

Only files ``slidemap`` wrote under the region folder are offered, found by where the commands put
them (README: "Where outputs land"); each button streams the file from the dashboard, so a user on
another machine takes the data with them. Files above :data:`MAX_BYTES` are listed with their path
instead (a browser download of gigabytes belongs to a file server, not a Streamlit page).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

MAX_BYTES = 300 * 1024 * 1024
MIME = {
    ".tif": "image/tiff", ".gpkg": "application/geopackage+sqlite3", ".json": "application/json",
    ".md": "text/markdown", ".qml": "application/xml", ".sld": "application/vnd.ogc.sld+xml",
    ".mbtiles": "application/vnd.mapbox-vector-tile", ".pmtiles": "application/octet-stream",
    ".png": "image/png", ".xml": "application/xml",
}
# (group, glob under the region, what it is)
PATTERNS = (
    ("Maps", "maps/*.tif", "GeoTIFF (COG)"),
    ("Maps", "maps/*.qml", "QGIS style"),
    ("Maps", "maps/*.sld", "SLD style"),
    ("Maps", "maps/*_classes.json", "class areas and landslide shares"),
    ("Maps", "maps/*.tif.aux.xml", "class names (GDAL)"),
    ("Inventories", "build/inventory.gpkg", "known inventory (points, polygons; styled)"),
    ("Inventories", "reports/inventory/*/landslides_detected.gpkg", "detected landslides (styled)"),
    ("Inventories", "reports/inventory/*/*.tif", "detection probability"),
    # archives of `slidemap seed --out` kept in the region (never a recursive walk: the tile cache is huge)
    ("Tile archives", "*.mbtiles", "MBTiles"),
    ("Tile archives", "maps/*.mbtiles", "MBTiles"),
    ("Tile archives", "*.pmtiles", "PMTiles"),
    ("Tile archives", "maps/*.pmtiles", "PMTiles"),
    ("Reports", "reports/*/*/report.json", "report (JSON)"),
    ("Reports", "reports/*/*/report.md", "report (Markdown)"),
)


@dataclass(frozen=True)
class Output:
    group: str
    path: Path
    what: str
    size: int

    @property
    def label(self) -> str:
        return f"{self.path.name} ({_size(self.size)})"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def region_outputs(region: Path) -> list[Output]:
    """The region's outputs, grouped, newest first within a group; each file once."""
    seen: set[Path] = set()
    out: list[Output] = []
    for group, pattern, what in PATTERNS:
        found = [p for p in region.glob(pattern) if p.is_file() and not p.name.startswith(".")]
        for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
            if path not in seen:
                seen.add(path)
                out.append(Output(group, path, what, path.stat().st_size))
    return out


def render(region: Path | None) -> None:
    st.header("Downloads")
    if region is None:
        st.info("No region given: start the dashboard with `slidemap dashboard REGION_DIR`.")
        return
    outputs = region_outputs(region)
    if not outputs:
        st.info(f"No outputs in {region} yet: `slidemap map susceptibility`, `slidemap inventory` and "
                "`slidemap train` write them.")
        return
    for group in dict.fromkeys(o.group for o in outputs):
        st.subheader(group)
        for i, o in enumerate(o for o in outputs if o.group == group):
            rel = o.path.relative_to(region)
            if o.size > MAX_BYTES:
                st.write(f"`{rel}` ({_size(o.size)}, {o.what}): too large to send through the page; copy it from the region folder.")
                continue
            st.download_button(f"{o.label} - {o.what}", data=o.path.read_bytes(), file_name=o.path.name,
                               mime=MIME.get(o.path.suffix, "application/octet-stream"), key=f"dl-{rel}",
                               help=str(rel))
