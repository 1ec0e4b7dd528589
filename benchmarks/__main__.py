"""Run every ``benchmarks/bench_<area>.py`` (or the named ones) and assemble ``BENCHMARKS.md``.

Each benchmark writes ``benchmarks/results/<area>.md``; this script runs them one after the
other (never in parallel: they time the same cores) and concatenates the sections.

``--device gpu`` runs them with ``SLIDEMAP_DEVICE=gpu`` (TensorFlow must see a GPU) and files their
sections under ``benchmarks/results/gpu/``, leaving the CPU sections as they were; BENCHMARKS.md
shows the GPU sections in a section of their own (``--device cpu`` hides a GPU the same way).
GPU run: ``SLIDEMAP_TF=gpu bash scripts/setup.sh && .venv/bin/python -m benchmarks --device gpu unet lsm precision``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import cpu_description as machine  # noqa: F401  (benchmarks import it from here)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ("prepare", "terrain", "windows", "unet", "lsm", "batch_shapes", "precision", "server", "blocks", "seed", "png")
GPU_RESULTS = HERE / "results" / "gpu"
GPU_PENDING = """## GPU

No GPU figures yet: no device was available where these benchmarks ran. The code paths are ready
and tested on CPU: `SLIDEMAP_TF=gpu bash scripts/setup.sh` installs `tensorflow[and-cuda]` (no
tensorflow-cpu), `slidemap status --json` reports the device TensorFlow uses (key `device`), and
`.venv/bin/python -m benchmarks --device gpu unet lsm precision` measures detection Mpx/s, training
chips/s, window and dense cells/s and mixed float16's agreement on the GPU into this section
(`SLIDEMAP_TF=gpu bash scripts/test.sh -m gpu -s` runs the GPU tests and prints GPU-vs-CPU differences).
On a GPU, inference uses XLA on padded fixed-shape batches, batch sizes from free GPU memory with an
out-of-memory fallback, and memory growth so the server, training and tests can share the device.
"""


def _sort_key(path: Path) -> tuple[int, str]:
    return (ORDER.index(path.stem) if path.stem in ORDER else 99, path.name)


def _as_subsection(text: str, level: int) -> str:
    """A section's title becomes a heading ``level`` deep (at least), its sub-headings move with it."""
    lines = text.strip().splitlines()
    top = len(lines[0]) - len(lines[0].lstrip("#")) if lines and lines[0].startswith("#") else level
    shift = max(0, level - top)
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            line = "#" * shift + line
        out.append(line)
    return "\n".join(out)


def _run(script: Path, device: str) -> int:
    """Run one benchmark; with --device gpu its new results go to results/gpu/ and the CPU ones stay."""
    env = dict(os.environ)
    if device != "auto":
        env["SLIDEMAP_DEVICE"] = device
    before = {p: p.read_bytes() for p in (HERE / "results").glob("*.md")}
    code = subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False, env=env).returncode
    if device == "gpu":
        GPU_RESULTS.mkdir(parents=True, exist_ok=True)
        for path in (HERE / "results").glob("*.md"):
            if before.get(path) != path.read_bytes():
                shutil.copyfile(path, GPU_RESULTS / path.name)
                if path in before:
                    path.write_bytes(before[path])
                else:
                    path.unlink()
    return code


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help="areas to run (default: all); 'none' only assembles")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where TensorFlow runs (SLIDEMAP_DEVICE); gpu results are filed apart")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda p: (ORDER.index(p.stem[6:]) if p.stem[6:] in ORDER else 99, p.name))
    wanted = [s for s in scripts if not args.names or s.stem[6:] in args.names]
    for script in wanted:
        print(f"==> {script.name}" + (f" (SLIDEMAP_DEVICE={args.device})" if args.device != "auto" else ""), flush=True)
        code = _run(script, args.device)
        if code:
            print(f"{script.name} failed with exit code {code}", file=sys.stderr)
            return code
    sections = sorted((HERE / "results").glob("*.md"), key=_sort_key)
    gpu_sections = sorted(GPU_RESULTS.glob("*.md"), key=_sort_key) if GPU_RESULTS.is_dir() else []
    out = [
        "# Benchmarks",
        "",
        "Made by `.venv/bin/python -m benchmarks` (each section says its own machine, date and command;",
        "ratios are measured within one run). Sections below were last assembled on "
        f"{dt.date.today().isoformat()} on: {machine()}.",
        "The sections below are CPU figures; GPU figures are in the last section, **GPU**.",
        "",
    ]
    for section in sections:
        out.append(_as_subsection(section.read_text(), 2))
        out.append("")
    if gpu_sections:
        out += ["## GPU", "", "Each section below says its GPU, date and command (`python -m benchmarks --device gpu`).", ""]
        for section in gpu_sections:
            out.append(_as_subsection(section.read_text(), 3))
            out.append("")
    else:
        out.append(GPU_PENDING)
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(sections)} sections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
