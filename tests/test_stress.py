"""The short form of ``make stress``: 256 clients for a few seconds against the real tool server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stress.py"


@pytest.mark.timeout(180)
def test_256_clients_for_a_few_seconds_lose_nothing_and_memory_stays_flat() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--clients", "256", "--seconds", "4", "--warmup", "2", "--no-embeddings",
         "--companies", "4"],
        capture_output=True, text=True, timeout=170,
    )
    out = done.stdout
    assert done.returncode == 0 and out.rstrip().endswith("ok"), out + done.stderr[-3000:]
    calls = re.search(r"calls: ([\d,]+) \(search ([\d,]+) · read ([\d,]+) · list ([\d,]+)\); errors 0; "
                      r"call ids lost 0, mismatched 0", out)
    assert calls, out
    total, *per_tool = (int(g.replace(",", "")) for g in calls.groups())
    assert total >= 256 and all(n > 0 for n in per_tool) and sum(per_tool) == total
    assert re.search(r"throughput: [\d,]+ calls/s; latency p50 \d+ ms, p99 \d+ ms", out)
    growth = float(re.search(r"at the end \(([+-][\d.]+)%", out).group(1))
    assert growth <= 10.0
