#!/usr/bin/env python3
"""The disk's fsync latency, the floor under every durable evidence commit.

Appends 8 KB and calls fdatasync, COUNT times (default 3,000), in a temporary file in DIR
(default: the current directory, which should be on the disk the data directory uses), and
prints p50, p90, p99, p99.9 and max in microseconds.

    python3 bench/fsync.py [DIR] [COUNT]
"""

import os
import sys
import tempfile
import time


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    block = b"x" * 8192
    micros = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="zt-fsync-") as f:
        for _ in range(count):
            os.write(f.fileno(), block)
            start = time.perf_counter()
            os.fdatasync(f.fileno())
            micros.append((time.perf_counter() - start) * 1e6)
    micros.sort()

    def at(q: float) -> float:
        return micros[min(len(micros) - 1, int(q * len(micros)))]

    print(
        f"fdatasync after an 8 KB append, {count} times: p50 {at(0.5):.0f} us, "
        f"p90 {at(0.9):.0f} us, p99 {at(0.99):.0f} us, p99.9 {at(0.999):.0f} us, "
        f"max {micros[-1]:.0f} us"
    )


if __name__ == "__main__":
    main()
