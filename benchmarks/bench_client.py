"""Per-request cost of the kit's client: inline (buffered) sends, streamed sends, httpx's own.

A micro-benchmark, not a test: a small FastAPI app with one JSON POST route, the same request
sent N times through each of

* ``inline``: the kit's client, ``client.post(...)`` (the app runs in the calling task);
* ``task``: the kit's transport in a plain ``AsyncClient`` (the app runs in a task of the
  transport's task group, as every request did before the inline path);
* ``streamed``: the kit's client, ``client.stream("POST", ...)`` read to its end;
* ``asgi``: the library's own ``ASGITransport``.

Rounds are interleaved so that drift on the machine hits every variant alike; the best round
is reported, in microseconds per request::

    python benchmarks/bench_client.py                 # httpx2 on asyncio, 5000 requests x 5
    python benchmarks/bench_client.py --library httpx --backend trio --n 2000
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

from anyio_fastapi_testkit._http.client import make_client
from anyio_fastapi_testkit._http.streaming import streaming_transport


class Item(BaseModel):
    name: str
    price: float


app = FastAPI()


@app.post("/items")
async def create_item(item: Item) -> dict[str, Any]:
    return {"name": item.name, "price": item.price, "id": 1}


PAYLOAD = {"name": "widget", "price": 9.5}


async def _time(send: Callable[[], Awaitable[None]], n: int) -> float:
    for _ in range(50):  # warm-up
        await send()
    started = time.perf_counter()
    for _ in range(n):
        await send()
    return (time.perf_counter() - started) / n * 1e6


async def _round(library: Any, n: int) -> dict[str, float]:
    results: dict[str, float] = {}
    kit = make_client(library, app)
    async with kit:

        async def inline() -> None:
            response = await kit.post("/items", json=PAYLOAD)
            assert response.status_code == 200

        async def streamed() -> None:
            async with kit.stream("POST", "/items", json=PAYLOAD) as response:
                await response.aread()
            assert response.status_code == 200

        results["inline"] = await _time(inline, n)
        results["streamed"] = await _time(streamed, n)

    transport = streaming_transport(library, app)
    async with library.AsyncClient(transport=transport, base_url="http://testserver") as plain:

        async def task() -> None:
            response = await plain.post("/items", json=PAYLOAD)
            assert response.status_code == 200

        results["task"] = await _time(task, n)

    asgi = library.ASGITransport(app=app)
    async with library.AsyncClient(transport=asgi, base_url="http://testserver") as reference:

        async def own() -> None:
            response = await reference.post("/items", json=PAYLOAD)
            assert response.status_code == 200

        results["asgi"] = await _time(own, n)
    return results


async def _main(library: Any, n: int, rounds: int) -> dict[str, list[float]]:
    collected: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, value in (await _round(library, n)).items():
            collected.setdefault(name, []).append(value)
    return collected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", default="httpx2", choices=["httpx2", "httpx"])
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--n", type=int, default=5000, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    library = importlib.import_module(args.library)
    collected = anyio.run(_main, library, args.n, args.rounds, backend=args.backend)
    print(f"{args.library} on {args.backend}, {args.n} requests x {args.rounds} rounds")
    print("variant    best µs/request   median")
    for name in ("inline", "task", "streamed", "asgi"):
        values = sorted(collected[name])
        print(f"{name:<10} {values[0]:>16.1f} {values[len(values) // 2]:>8.1f}")


if __name__ == "__main__":
    main()
