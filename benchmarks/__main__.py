"""Run every ``benchmarks/bench_<area>.py`` (or the named ones) and assemble ``BENCHMARKS.md``.

Each benchmark writes ``benchmarks/results/<area>.md``; this script runs them one after the
other (never in parallel: they time the same cores) and concatenates the sections.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import cpu_description as machine  # noqa: F401  (benchmarks import it from here)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ("prepare", "terrain", "windows", "unet", "lsm", "server", "seed")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help="areas to run (default: all); 'none' only assembles")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda p: (ORDER.index(p.stem[6:]) if p.stem[6:] in ORDER else 99, p.name))
    wanted = [s for s in scripts if not args.names or s.stem[6:] in args.names]
    for script in wanted:
        print(f"==> {script.name}", flush=True)
        code = subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False).returncode
        if code:
            print(f"{script.name} failed with exit code {code}", file=sys.stderr)
            return code
    sections = sorted((HERE / "results").glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.name))
    out = [
        "# Benchmarks",
        "",
        "Made by `.venv/bin/python -m benchmarks` (each section says its own machine, date and command;",
        "ratios are measured within one run). Sections below were last assembled on "
        f"{dt.date.today().isoformat()} on: {machine()}.",
        *(
            ["This machine has an NVIDIA GPU; sections say which device they used.", ""]
            if shutil.which("nvidia-smi")
            else [
                "No GPU on this machine: every figure is CPU-only (TensorFlow uses a GPU, with memory",
                "growth, when it sees one; GPU figures are still to be measured).",
                "",
            ]
        ),
    ]
    for section in sections:
        text = section.read_text().strip()
        if text.startswith("# "):  # one document: a section's own title becomes a level-2 heading
            text = "#" + "\n".join("#" + ln if ln.startswith("#") and i else ln for i, ln in enumerate(text.splitlines()))
        out.append(text)
        out.append("")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(sections)} sections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
