"""The endpoint pool without sockets: which endpoint takes a row (pool.py), an endpoint's
health (health.py), `[[endpoints]]` settings (endpoints.py) and the rate window's look
ahead (RateWindow.earliest) that the choice rests on."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from batchrun.concurrency import FixedLimit
from batchrun.config import build_config, load_toml
from batchrun.endpoints import EndpointSpec, endpoint_config, endpoint_specs
from batchrun.errors import AuthError, ConfigError, RateLimitError, ServerError, TransportError
from batchrun.health import COOL_BASE_S, STREAK, EndpointHealth, Health
from batchrun.identity import same_job
from batchrun.limits import RateLimiter, RateWindow, Waiters
from batchrun.payloads import BodyBuilder
from batchrun.pool import Endpoint, EndpointPool
from batchrun.server_limits import read_server_limits

from .engine_fakes import FakeClock

# ---------------------------------------------------------------- fakes


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on its own event loop (the project has no pytest async plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class Prober:
    """An EndpointClient's probe only: answers as told, and counts."""

    def __init__(self) -> None:
        self.answers: list[bool | Exception] = []
        self.probes = 0

    async def probe(self) -> bool:
        self.probes += 1
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer


def endpoint(
    key: str,
    clock: FakeClock,
    *,
    concurrency: int = 2,
    rpm: int = 0,
    weight: float = 1.0,
    fallback: bool = False,
    pending: int = 100,
) -> Endpoint:
    spec = EndpointSpec(base_url=f"http://{key}/v1", name=key, weight=weight, fallback=fallback)
    cfg = build_config({}, {"base_url": spec.base_url, "max_pending": pending})
    limiter = RateLimiter(RateWindow(rpm or None, rng=random.Random(1)), clock=clock.monotonic)
    return Endpoint(
        spec=spec,
        cfg=cfg,
        client=Prober(),  # type: ignore[arg-type]
        limiter=limiter,
        builder=BodyBuilder({}),
        concurrency=FixedLimit(concurrency),
    )


def pool_of(*endpoints: Endpoint, clock: FakeClock) -> EndpointPool:
    return EndpointPool(endpoints, clock)


async def leases(pool: EndpointPool, n: int) -> list[str]:
    return [(await pool.lease()).key for _ in range(n)]


# ---------------------------------------------------------------- choosing


@in_loop
async def test_rows_fill_every_endpoint_by_load_and_weight() -> None:
    clock = FakeClock()
    a, b = endpoint("a", clock, concurrency=4), endpoint("b", clock, concurrency=4, weight=3)
    pool = pool_of(a, b, clock=clock)
    taken = await leases(pool, 8)
    assert sorted(taken) == ["a"] * 4 + ["b"] * 4  # the sum of both, not the slowest one
    assert taken[:4].count("b") == 3  # while both have room, weight 3 gets three in four


@in_loop
async def test_a_full_pool_waits_first_come_first_served() -> None:
    clock = FakeClock()
    a = endpoint("a", clock, concurrency=1)
    pool = pool_of(a, clock=clock)
    first = await pool.lease()
    order: list[int] = []

    async def take(i: int) -> None:
        await pool.lease()
        order.append(i)

    waiting = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        pool.release(first)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]


@in_loop
async def test_the_endpoint_that_can_start_soonest_gets_the_row() -> None:
    clock = FakeClock()
    slow = endpoint("slow", clock, concurrency=8, rpm=6)  # one start every 10 s
    fast = endpoint("fast", clock, concurrency=8)
    pool = pool_of(slow, fast, clock=clock)
    first = await pool.lease()
    await first.limiter.acquire()
    assert first.key == "slow"  # both could start at once: the first one listed
    assert slow.limiter.delay() > 1.0
    assert [e for e in await leases(pool, 5)] == ["fast"] * 5


@in_loop
async def test_pending_ids_count_against_their_endpoint() -> None:
    clock = FakeClock()
    a, b = endpoint("a", clock, concurrency=4, pending=1), endpoint("b", clock, concurrency=4)
    a.pending = 1  # an id polled there: a takes no new row
    pool = pool_of(a, b, clock=clock)
    assert await leases(pool, 3) == ["b"] * 3


@in_loop
async def test_a_fallback_gets_rows_only_while_no_primary_is_up() -> None:
    clock = FakeClock()
    primary, spare = (
        endpoint("primary", clock, concurrency=1),
        endpoint("spare", clock, fallback=True),
    )
    pool = pool_of(primary, spare, clock=clock)
    assert (await pool.lease()).key == "primary"
    full = asyncio.create_task(pool.lease())  # the primary is busy, not down: wait for it
    await asyncio.sleep(0)
    assert not full.done()
    for _ in range(STREAK):
        pool.failed(primary, TransportError("connection refused"))
    assert primary.health.state is Health.COOLING
    pool.release(primary)
    assert (await full).key == "spare"


# ---------------------------------------------------------------- health and failover


@in_loop
async def test_a_failing_endpoint_cools_down_its_rows_go_elsewhere_and_a_probe_brings_it_back() -> (
    None
):
    clock = FakeClock()
    a, b = endpoint("a", clock), endpoint("b", clock)
    pool = pool_of(a, b, clock=clock)
    a.client.answers = [False, True]  # type: ignore[attr-defined]
    for _ in range(STREAK - 1):
        pool.failed(a, ServerError(503, "busy"))
    assert a.health.up  # a streak, not one failure
    pool.failed(a, ServerError(503, "busy"))
    assert a.health.state is Health.COOLING
    assert await leases(pool, 2) == ["b", "b"]
    await asyncio.wait_for(_until(lambda: a.health.up), 5)
    assert a.client.probes == 2  # type: ignore[attr-defined]
    assert clock.sleeps[:2] == [COOL_BASE_S, 2 * COOL_BASE_S]  # the back-off doubles
    await pool.close()


@in_loop
async def test_a_row_fault_or_a_429_never_cools_an_endpoint() -> None:
    clock = FakeClock()
    a, b = endpoint("a", clock), endpoint("b", clock)
    pool = pool_of(a, b, clock=clock)
    for _ in range(2 * STREAK):
        pool.failed(a, ServerError(400, "bad request"))
        pool.failed(a, RateLimitError(429, "slow down"))
    assert a.health.up


@in_loop
async def test_one_endpoint_alone_never_waits_on_its_health() -> None:
    """A job of one endpoint behaves as before pools: its rows go on trying and fail by the
    retry policy, rather than wait for a probe."""
    clock = FakeClock()
    only = endpoint("only", clock)
    pool = pool_of(only, clock=clock)
    for _ in range(3 * STREAK):
        pool.failed(only, TransportError("connection refused"))
    assert only.health.up
    assert (await pool.lease()).key == "only"


@in_loop
async def test_with_every_endpoint_cooling_rows_still_go_out() -> None:
    clock = FakeClock(block_from=1.0)  # the probes never come: rows must not wait for them
    a, b = endpoint("a", clock), endpoint("b", clock)
    pool = pool_of(a, b, clock=clock)
    for e in (a, b):
        for _ in range(STREAK):
            pool.failed(e, TransportError("connection refused"))
    assert {(await pool.lease()).key for _ in range(4)} == {"a", "b"}
    await pool.close()


@in_loop
async def test_a_refused_key_takes_its_endpoint_out_and_all_refused_raises() -> None:
    clock = FakeClock()
    a, b = endpoint("a", clock), endpoint("b", clock)
    pool = pool_of(a, b, clock=clock)
    pool.failed(a, AuthError("HTTP 401 (check the API key in $KEY_A)"))
    assert a.health.state is Health.OUT and not pool.all_out()
    assert await leases(pool, 2) == ["b", "b"]
    pool.failed(b, AuthError("HTTP 403 (check the API key in $KEY_B)"))
    with pytest.raises(AuthError, match="KEY_A.*KEY_B"):
        await pool.lease()


@in_loop
async def test_a_waiter_raises_when_the_last_key_is_refused() -> None:
    clock = FakeClock()
    a = endpoint("a", clock, concurrency=1)
    pool = pool_of(a, endpoint("b", clock, concurrency=1), clock=clock)
    await leases(pool, 2)
    waiting = asyncio.create_task(pool.lease())
    await asyncio.sleep(0)
    pool.failed(a, AuthError("no"))
    pool.failed(pool.endpoints[1], AuthError("no"))
    with pytest.raises(AuthError):
        await waiting


def test_find_knows_endpoints_by_name_and_base_url_and_old_rows_by_none() -> None:
    clock = FakeClock()
    a, b = endpoint("a", clock), endpoint("b", clock)
    pool = pool_of(a, b, clock=clock)
    assert pool.find("b") is b and pool.find("http://b/v1/") is b
    assert pool.find(None) is a  # a row of a release before pools: the job's one endpoint
    assert pool.find("gone") is None


def test_health_back_off_is_capped_and_resets_once_up() -> None:
    health = EndpointHealth(streak=1, base_s=2, max_s=5)
    assert health.on_failure(0.0, "x") and health.cool_until == 2
    health.probed(2.0, answered=False)
    assert health.cool_until == 2.0 + 4
    health.probed(6.0, answered=False)
    assert health.cool_until == 6.0 + 5  # capped
    health.probed(11.0, answered=True)
    health.on_success()
    assert health.up and health.cool_downs == 0
    assert health.on_failure(12.0, "x") and health.cool_until == 14.0


async def _until(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 (the pool has no event to wait on)
        await asyncio.sleep(0)


# ---------------------------------------------------------------- settings


POOL_TOML = """
rpm = 30
concurrency = 8
model = "job/model"

[[endpoints]]
name = "key-a"
base_url = "https://integrate.api.nvidia.com/v1"
api_key_env = "NVIDIA_KEY_A"

[[endpoints]]
base_url = "http://127.0.0.1:8001/v1"
rpm = 0
concurrency = "auto"
max_concurrency = 32
weight = 2

[[endpoints]]
base_url = "http://127.0.0.1:8002/v1"
model = "small/model"
fallback = true
"""


def test_endpoint_tables_inherit_what_they_leave_out(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(POOL_TOML)
    cfg = build_config(load_toml(path), {})
    a, b, c = endpoint_specs(cfg)
    own_a, own_b, own_c = (endpoint_config(cfg, spec) for spec in (a, b, c))
    assert (a.key, own_a.api_key_env, own_a.rpm, own_a.concurrency) == (
        "key-a", "NVIDIA_KEY_A", 30, 8
    )  # fmt: skip
    assert b.key == "http://127.0.0.1:8001/v1" and b.auto and b.weight == 2.0
    assert (own_b.rpm, own_b.concurrency, own_b.api_key_env) == (0, 32, "NVIDIA_API_KEY")
    assert c.fallback and own_c.body_template()["model"] == "small/model"
    assert own_a.body_template()["model"] == "job/model"


def test_without_endpoints_the_job_is_its_own_endpoint() -> None:
    cfg = build_config({}, {"base_url": "http://127.0.0.1:9/v1", "rpm": 7})
    (only,) = endpoint_specs(cfg)
    assert only.key == "http://127.0.0.1:9/v1"
    assert endpoint_config(cfg, only).rpm == 7


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([{"base_url": "http://a/v1", "rpm": -1}], r"endpoints\[0\]\.rpm"),
        ([{"base_url": "http://a/v1"}, {"base_url": "http://a/v1"}], r"endpoints\[1\].*same"),
        ([{"base_url": "http://a/v1", "concurency": 2}], "did you mean 'concurrency'"),
        ([{"base_url": "http://a/v1", "fallback": True}], "at least one must not be"),
        ([{"base_url": "http://a/v1", "api_key_env": "nvapi-secret-123"}], "not shown"),
    ],
)
def test_bad_endpoint_tables_are_named_by_position(tables: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build_config({"endpoints": tables}, {}, source="job.toml")
    assert "job.toml: endpoints" in str(caught.value)
    assert "nvapi-secret" not in str(caught.value)


def test_the_ray_engine_refuses_a_pool() -> None:
    with pytest.raises(ConfigError, match="Ray engine"):
        build_config({"endpoints": [{"base_url": "http://a/v1"}], "engine": "ray"}, {})


def test_endpoints_are_not_what_the_job_is() -> None:
    """Adding, removing or retuning an endpoint goes on with the same checkpoint; a model
    or request body change is another job, as before."""
    digests = ["d"]
    before = build_config({}, {"base_url": "http://a/v1"}).identity(digests)
    tables = [{"base_url": "http://a/v1", "rpm": 5}, {"base_url": "http://b/v1"}]
    assert same_job(before, build_config({"endpoints": tables}, {}).identity(digests))
    old_release = {**before, "base_url": "http://a/v1"}  # identities used to hold it
    assert same_job(old_release, before)
    assert not same_job(before, build_config({}, {"model": "x/y"}).identity(digests))


# ---------------------------------------------------------------- the rate window's look ahead


@pytest.mark.parametrize("seed", range(20))
def test_earliest_books_nothing(seed: int) -> None:
    """A pool looks at every endpoint's window before each row: looking must not change
    what is booked (reserve is earliest and then the booking)."""

    def bookings(look: bool) -> list[float]:
        rng = random.Random(seed)
        window = RateWindow(
            rng.choice([None, 5, 30]), rng.choice([None, 2000, 10_000]), rng=random.Random(1)
        )
        looks = random.Random(seed + 1000)
        now, starts = 0.0, []
        for _ in range(60):
            now += rng.uniform(0, 3)
            tokens = rng.randint(0, 3000)
            if rng.random() < 0.05:
                window.on_rate_limited(now, None)
            if look:
                for _ in range(3):
                    window.earliest(now + looks.uniform(0, 5), looks.randint(0, 3000))
                assert window.earliest(now, tokens) == window.earliest(now, tokens)
            starts.append(window.reserve(now, tokens).at)
        return starts

    assert bookings(look=True) == bookings(look=False)


@pytest.mark.parametrize("name", ["nvidia-keys.toml", "vllm-replicas.toml"])
def test_the_readmes_pool_configs_are_valid(name: str) -> None:
    path = Path(__file__).parent.parent / "configs" / name
    cfg = build_config(load_toml(path), {"output": "out.parquet"})
    specs = endpoint_specs(cfg)
    assert len(specs) >= 2 and len({s.key for s in specs}) == len(specs)


@in_loop
async def test_a_poll_that_ends_makes_room_for_a_waiting_row() -> None:
    """A primary whose pending ids are its limit, with a fallback the row may not use: the
    row waits for the primary, and the end of a poll there (no submission ends) wakes it."""
    clock = FakeClock()
    primary = endpoint("primary", clock, pending=2)
    pool = pool_of(primary, endpoint("spare", clock, fallback=True), clock=clock)
    pool.polling(primary)
    pool.polling(primary)
    waiting = asyncio.create_task(pool.lease())
    await asyncio.sleep(0)
    assert not waiting.done()
    pool.polled(primary)
    assert (await asyncio.wait_for(waiting, 1)).key == "primary"


@in_loop
async def test_rows_waiting_for_a_busy_primary_go_to_the_fallback_once_it_cools() -> None:
    clock = FakeClock(block_from=1.0)
    primary = endpoint("primary", clock, concurrency=1)
    pool = pool_of(primary, endpoint("spare", clock, fallback=True), clock=clock)
    await pool.lease()
    waiting = asyncio.create_task(pool.lease())
    await asyncio.sleep(0)
    assert not waiting.done()
    for _ in range(STREAK):
        pool.failed(primary, TransportError("connection reset"))
    assert (await asyncio.wait_for(waiting, 1)).key == "spare"
    await pool.close()


def test_an_endpoint_named_with_a_trailing_slash_is_found_by_its_name() -> None:
    clock = FakeClock()
    a = endpoint("a", clock)
    b = Endpoint(**{**a.__dict__, "spec": EndpointSpec(base_url="http://b/v1", name="team/")})
    pool = pool_of(a, b, clock=clock)
    assert pool.find("team/") is b


def test_rows_an_earlier_release_filed_by_url_poll_with_the_jobs_own_key() -> None:
    clock = FakeClock()
    first, own = endpoint("first", clock), endpoint("own", clock)
    url = "https://integrate.api.nvidia.com/v1"
    first.spec = EndpointSpec(base_url=url, name="first", api_key_env="OTHER_KEY")
    first.cfg = build_config({}, {"base_url": url, "api_key_env": "OTHER_KEY"})
    own.spec = EndpointSpec(base_url=url, name="own")
    own.cfg = build_config({}, {"base_url": url})
    pool = EndpointPool([first, own], clock, job_key_env="NVIDIA_API_KEY")
    assert pool.find(url) is own


@pytest.mark.parametrize(("reset", "paused"), [("2s", True), ("24h0m0s", False)])
def test_the_servers_rate_limit_headers_pause_an_endpoint_only_briefly(
    reset: str, paused: bool
) -> None:
    clock = FakeClock()
    a = endpoint("a", clock)
    pool = pool_of(a, clock=clock)
    limits = read_server_limits(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset}
    )
    pool.answered(a, 0.1, 1, limits)
    assert (a.limiter.delay() > 1.0) is paused  # a daily quota is left to its 429


def test_a_pool_of_local_servers_is_not_judged_as_nvidia() -> None:
    tables = [{"base_url": "http://127.0.0.1:8001/v1"}, {"base_url": "http://127.0.0.1:8002/v1"}]
    cfg = build_config({"endpoints": tables, "timeout": 10}, {})  # below NVIDIA's hold: fine
    assert cfg.timeout == 10


@in_loop
async def test_a_cancelled_waiter_does_not_let_later_ones_jump_the_queue() -> None:
    waiters = Waiters()
    gone, second = (asyncio.create_task(waiters.wait()) for _ in range(2))
    await asyncio.sleep(0)
    gone.cancel()  # its future is cancelled now; its task has not run its handler yet
    waiters.wake(1)  # skips the cancelled one, wakes the second
    with pytest.raises(asyncio.CancelledError):
        await gone
    await second
    third = asyncio.create_task(waiters.wait())
    await asyncio.sleep(0)
    waiters.wake(1)
    assert waiters.busy  # the third is woken, not run: a newcomer must queue behind it
    await third
    assert not waiters.busy
