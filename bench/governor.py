"""Governor benchmark: 4 worker processes on one 3 req/s Bling account for 60 s.

    .venv/bin/python -m bench.governor [--seconds 60] [--workers 4]

The sandbox enforces Bling's 3 requests/s per account (429 TOO_MANY_REQUESTS past it).
Each worker process has its own Governor (as `erp-sync worker` processes do), sharing
the account's schedule in Redis. Target: ≥ 95 % of the allowed requests used, zero 429s.
The baseline, from the sandbox's own log of the run: a client pacing itself perfectly can
make at most 3 × (last − first request time) + 1 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import uuid

import httpx
import redis.asyncio as aioredis

from bench.common import record, sandbox_process, tokens
from erp_sync.connectors.base import RateLimits
from erp_sync.connectors.governor import Governor
from erp_sync.connectors.http import ErpHttp
from erp_sync.errors import RetryableError

RATE = 3


async def child(root: str, token: str, prefix: str, seconds: float) -> None:
    redis = aioredis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    governor = Governor(
        redis, prefix=prefix, provider="bling", account="bench", limits=RateLimits(per_second=RATE)
    )
    http = ErpHttp(f"{root}/Api/v3", governor, provider="bling", attempts=1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(RetryableError):  # a 429 is counted by the sandbox
            await http.request(
                "GET", "/produtos", params={"pagina": 1, "limite": 1},
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
    await http.aclose()
    await redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "TOKEN", "PREFIX"))
    args = ap.parse_args()
    if args.child:
        asyncio.run(child(*args.child, args.seconds))
        return
    with sandbox_process("--products", "10", "--rate-limit", str(RATE)) as sandbox:
        root = sandbox.root
        token = tokens(root)["access_token"]
        httpx.post(f"{root}/__sandbox/stats/reset", timeout=10)
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.governor",
                    "--seconds",
                    str(args.seconds),
                    "--child",
                    root,
                    token,
                    prefix,
                ]
            )
            for _ in range(args.workers)
        ]
        for p in procs:
            p.wait(args.seconds + 60)
        stats = httpx.get(f"{root}/__sandbox/stats", timeout=10).json()
    ok = int(stats["ok"])
    limited = int(stats["rate_limited"])
    span = float(stats["first_to_last_seconds"])
    allowed = RATE * span + 1
    usage = ok / allowed
    record(
        "governor",
        f"{args.workers} worker processes, one {RATE} req/s account, {args.seconds:g} s",
        f"{ok} requests answered, {limited} × 429",
        f"used ÷ allowed = **{usage:.3f}** (target ≥ 0.95); 429s = **{limited}** (target 0)",
    )


if __name__ == "__main__":
    main()
