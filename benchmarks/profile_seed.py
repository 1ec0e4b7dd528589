"""Where one seeding worker's time goes: cProfile of ``seed`` in this process (``workers=1``).

``.venv/bin/python benchmarks/profile_seed.py REGION [--layer imagery] [--zoom 11-15] [--top 15]``
prints the wall time and the functions with the most own time (the figures quoted under "Seeding"
in BENCHMARKS.md). The tile cache and archive go to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("region", type=Path)
    ap.add_argument("--layer", default="imagery")
    ap.add_argument("--zoom", default="11-15")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    from slidemap.server.seed import seed

    work = Path(tempfile.mkdtemp(prefix="profile-seed-"))
    try:
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        seed(args.region, [args.layer], zoom=args.zoom, out_format="mbtiles", out=work / "x.mbtiles",
             cache_dir=work / "cache", workers=1, progress=False)
        profile.disable()
        print(f"seed {args.layer} {args.zoom}, one worker: {time.perf_counter() - t0:.1f} s wall")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
