"""``slidemap dashboard [REGION_DIR]``: start the Streamlit dashboard (map + reports), offline.

Runs ``streamlit run dashboard/app.py`` headless on 127.0.0.1 with telemetry off, and hands the tile
server's URL, the region folder (if given) and extra report folders to the app in its environment.
The dashboard reads the region through the server; the folder is only its fallback for the reports
while the server cannot list them, so a dashboard on another machine needs none.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from slidemap.errors import InputError, RegionError

DEFAULT_SERVER = "http://127.0.0.1:8000"


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    parser = groups["root"].add_parser(
        "dashboard",
        help="start the dashboard: the tile server's map beside the training reports",
        description="Start the Streamlit dashboard for a region. Start the tile server first "
        "(`slidemap serve REGION_DIR`); the dashboard shows its layers, models, reports and outputs, "
        "all read from the server, so it may run on another machine.",
    )
    parser.add_argument("region_dir", metavar="REGION_DIR", type=Path, nargs="?", default=None,
                        help="the region folder, read only while the server cannot list the reports (optional)")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"tile server URL (default {DEFAULT_SERVER})")
    parser.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--reports",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="extra report folders to show (repeatable; default: the repo's reports/real if present)",
    )
    parser.set_defaults(handler=run)


def app_path() -> Path:
    import slidemap.dashboard

    return Path(slidemap.dashboard.__file__).resolve().parent / "app.py"


def default_report_dirs() -> list[Path]:
    """The repo's committed real-data reports, when this is a source checkout."""
    real = Path(__file__).resolve().parents[2] / "reports" / "real"
    return [real] if real.is_dir() else []


def streamlit_command(app: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "none",
        "--global.developmentMode", "false",
    ]


def dashboard_env(region: Path | None, server: str, reports: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env["SLIDEMAP_REGION"] = str(region.resolve()) if region is not None else ""
    env["SLIDEMAP_SERVER"] = server.rstrip("/")
    env["SLIDEMAP_REPORTS"] = os.pathsep.join(str(p.resolve()) for p in reports)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    return env


def run(args: argparse.Namespace) -> int:
    region: Path | None = args.region_dir
    if region is not None and not region.is_dir():
        raise RegionError(f"{region}: no such region folder; create one with `slidemap demo-region {region}`")
    if not args.server.startswith(("http://", "https://")):
        raise InputError(f"--server {args.server}: give a URL such as {DEFAULT_SERVER}")
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: give a port between 1 and 65535")
    reports = args.reports if args.reports is not None else default_report_dirs()
    for folder in reports:
        if not folder.is_dir():
            raise InputError(f"--reports {folder}: no such folder")
    app = app_path()
    if not app.is_file():
        raise InputError(f"{app}: the dashboard app is missing from this installation; reinstall slidemap")
    print(f"slidemap dashboard: http://{args.host}:{args.port}/  (tiles from {args.server}; Ctrl-C stops)", flush=True)
    command = streamlit_command(app, args.host, args.port)
    env = dashboard_env(region, args.server, reports)
    if os.name == "posix":
        # Become streamlit: one process, so a signal to this PID (Ctrl-C, a service manager, a test
        # stopping it) reaches the server itself instead of orphaning a child.
        sys.stdout.flush()
        os.execvpe(command[0], command, env)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
