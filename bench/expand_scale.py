"""Time the expansion of an issue to N recipients into deliveries (the target: 1,000,000 in
at most 20 s), on SQLite or PostgreSQL: until the first chunk is queued (what "send now"
waits for) and until the last is. Writes bench/results/expand-<db>.json.

    .venv/bin/python bench/expand_scale.py [--subscribers 1000000] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import RESULTS, new_issue, newsletter_html, seed, store
from mailer.sending import start_issue
from subscriptions.runtime import build_runtime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, store(options.db, Path(scratch)) as target:
        started = time.perf_counter()
        magazine_id, _ = seed(target, options.subscribers)
        seeded = time.perf_counter() - started
        runtime = build_runtime(target.settings, target.engine)
        issue_id = new_issue(target, magazine_id, newsletter_html())
        started = time.perf_counter()
        first = start_issue(
            target.engine, runtime.audience, runtime.preparer, issue_id, complete=False
        )
        first_chunk = time.perf_counter() - started
        queued = first + runtime.start_issue(issue_id)
        expanded = time.perf_counter() - started
    result = {
        "database": options.db,
        "subscribers": options.subscribers,
        "deliveries_queued": queued,
        "first_chunk_seconds": round(first_chunk, 3),
        "expand_seconds": round(expanded, 2),
        "seed_seconds": round(seeded, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target": "1,000,000 in <= 20 s",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"expand-{options.db}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
