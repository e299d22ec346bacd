"""``mqttv5 storage check|compact|stats [--data-dir DIR]``: look after the durable store.

Run it while the broker is stopped: a running broker locks its data directory, and this
command then exits with an error naming the broker's process id. It first folds whatever the
journal still holds (what a killed broker left) into the database.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mqttv5.broker.storage import StorageError
from mqttv5.broker.storage.sqlite import SqliteStore

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mqttv5 storage``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="mqttv5 storage", description="Check, compact or count the broker's durable store."
    )
    parser.add_argument("action", choices=("check", "compact", "stats"))
    parser.add_argument(
        "--data-dir", default="./mqttv5-data", help="the broker's data directory (./mqttv5-data)"
    )
    args = parser.parse_args(argv)
    try:
        store = SqliteStore(args.data_dir)
    except (StorageError, OSError) as exc:
        print(f"mqttv5 storage: error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "check":
            problems = store.check()
            for problem in problems:
                print(problem)
            print("ok" if not problems else f"{len(problems)} problem(s)")
            return 0 if not problems else 1
        if args.action == "compact":
            store.compact()
        for table, count in store.counts().items():
            print(f"{table:<14} {count}")
        return 0
    finally:
        store.close()
