"""`slidemap prepare` on the default demo region (20 km, 30 m): wall time and peak memory,
cold (first build) and warm (everything reused). Writes benchmarks/results/prepare.md."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine  # noqa: E402


def run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``slidemap ARGV`` in a fresh process of its own."""
    code = (
        "import resource, sys, time\n"
        "from slidemap.cli import main\n"
        "t0 = time.perf_counter()\n"
        f"rc = main({argv!r})\n"
        "print('BENCH', time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("BENCH")][-1].split()
    return float(line[1]), float(line[2]) / 1024


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        region = work / "region"
        gen_s, gen_mb = run(["demo-region", str(region), "--size-km", "20", "--seed", "0"])
        cold_s, cold_mb = run(["prepare", str(region), "--quiet"])
        warm_s, warm_mb = run(["prepare", str(region), "--quiet"])
        import json

        grid = json.loads((region / "build" / "factors.json").read_text())["grid"]
        lines = [
            "## prepare (foundation)",
            "",
            f"- machine: {machine()}",
            f"- date: {dt.date.today().isoformat()}",
            "- command: `.venv/bin/python benchmarks/bench_prepare.py` (default demo region: `slidemap demo-region --size-km 20 --seed 0`, then `slidemap prepare` twice)",
            f"- region: analysis grid {grid['width']} x {grid['height']} cells at 30 m, imagery 10 m, 14 factors",
            "",
            "| step | wall time (s) | peak RSS (MB) |",
            "|---|---|---|",
            f"| demo-region (generate) | {gen_s:.1f} | {gen_mb:.0f} |",
            f"| prepare, cold (numba cache warm) | {cold_s:.1f} | {cold_mb:.0f} |",
            f"| prepare, warm (all steps reused) | {warm_s:.1f} | {warm_mb:.0f} |",
            "",
            "Each row runs in a fresh Python process; peak RSS is that process's own `ru_maxrss`",
            "(interpreter and library imports included).",
            "",
        ]
        out = ROOT / "benchmarks" / "results" / "prepare.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines))
        print(out.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
