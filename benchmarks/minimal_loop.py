"""The reference client for benchmarks: the least a Python program can do.

One aiohttp session, N tasks pulling prompts from a shared iterator, each answer's JSON
parsed, results kept in a list and written once at the end. No retries, no checkpoint, no
rate limit. batchrun's speed targets are ratios against this loop, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def run(url: str, prompts_path: str, concurrency: int, out: str) -> int:
    with open(prompts_path) as fh:  # noqa: ASYNC230 - before any request
        prompts = [json.loads(line) for line in fh]
    rows = iter(prompts)
    results: list[tuple[str, str, int]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for row in rows:
                body = {"model": "m", "messages": [{"role": "user", "content": row["prompt"]}]}
                async with session.post(url, json=body) as resp:
                    answer = json.loads(await resp.read())
                choice = answer["choices"][0]["message"]["content"]
                results.append((row["id"], choice, answer["usage"]["total_tokens"]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    with open(out, "w") as fh:  # noqa: ASYNC230 - after the last request
        json.dump(results, fh)
    return len(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    n = asyncio.run(run(args.url, args.prompts, args.concurrency, args.out))
    elapsed = time.perf_counter() - started
    print(json.dumps({"rows": n, "seconds": elapsed}))


if __name__ == "__main__":
    main()
