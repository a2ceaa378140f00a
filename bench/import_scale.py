"""Import a generated CSV of N rows with `mailmag import` on SQLite and measure it.

Runs the real command in a child process twice per size (the second run must change
nothing), records wall time, rows per second and the child's peak RSS, for a small and a
large file, so flat memory shows as the ratio of the two peaks. Writes
bench/results/import.json.

    .venv/bin/python bench/import_scale.py            # 100,000 and 1,000,000 rows
    .venv/bin/python bench/import_scale.py --quick    # 10,000 and 100,000 rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAILMAG = str(Path(sys.executable).parent / "mailmag")


def generate(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name,company,locale\n")
        for n in range(rows):
            handle.write(f"reader{n:07d}@example{n % 97}.org,読者 {n},Company {n % 1000},ja\n")


def run(args: list[str], cwd: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) of the child, and its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    env["MAILMAG_SECRET_KEY"] = "bench-" + "s" * 40
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 (our own command, fixed arguments)
        [MAILMAG, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mailmag {' '.join(args)} failed: {done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before), done.stdout


def measure(rows: int, work: Path) -> dict[str, object]:
    directory = work / f"n{rows}"
    directory.mkdir()
    csv_file = directory / "list.csv"
    generate(csv_file, rows)
    run(["migrate"], directory)
    args = ["import", str(csv_file), "--magazine", "weekly", "--staff", "bench"]
    first, rss, output = run(args, directory)
    again, _, second_output = run(args, directory)
    return {
        "rows": rows,
        "file_mb": round(csv_file.stat().st_size / 1e6, 1),
        "seconds": round(first, 1),
        "rows_per_second": round(rows / first),
        "peak_rss_mb": round(rss / 1024, 1),
        "summary": output.strip().splitlines()[-1],
        "second_import_seconds": round(again, 2),
        "second_import": second_output.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    sizes = (10_000, 100_000) if options.quick else (100_000, 1_000_000)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for rows in sizes:
            # Each size in its own child: RUSAGE_CHILDREN keeps the largest child's peak, so the
            # small run must come first.
            results.append(measure(rows, Path(scratch)))
            print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    small, large = results
    python = platform.python_version()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {python}",
        "database": "sqlite",
        "runs": results,
        "rss_ratio_large_to_small": round(
            float(large["peak_rss_mb"]) / float(small["peak_rss_mb"]), 2
        ),  # type: ignore[arg-type]
    }
    out = ROOT / "bench" / "results" / "import.json"
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
