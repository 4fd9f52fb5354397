"""The openai SDK pattern, as people write it: one task per row, a semaphore, gather.

AsyncOpenAI with retries off, asyncio.Semaphore(concurrency) around each call, every row's
coroutine gathered at once, results kept in a list and written once at the end. The same
command line and output as minimal_loop.py (`--url` is the full chat completions URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from openai import AsyncOpenAI

SUFFIX = "/chat/completions"


async def run(url: str, prompts_path: str, concurrency: int, out: str) -> int:
    with open(prompts_path) as fh:  # noqa: ASYNC230 - before any request
        prompts = [json.loads(line) for line in fh]
    base_url = url[: -len(SUFFIX)] if url.endswith(SUFFIX) else url
    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(row: dict[str, str]) -> tuple[str, str | None, int | None]:
        async with gate:
            answer = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": row["prompt"]}]
            )
        total = answer.usage.total_tokens if answer.usage else None
        return row["id"], answer.choices[0].message.content, total

    try:
        results = await asyncio.gather(*(one(row) for row in prompts))
    finally:
        await client.close()
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
