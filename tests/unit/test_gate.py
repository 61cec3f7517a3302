"""The API gate (gate.py): when it closes, how it probes, and what a batch out of budget
learns from it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import SecretStr

from consumer.launchdarkly.client import TokenSource
from consumer.launchdarkly.errors import (
    ApiError,
    BadRequest,
    RateLimited,
    ServerError,
    Unauthorized,
)
from consumer.launchdarkly.gate import ApiGate, Closed, OutageDetector, Verdict
from tests.factories import until


def test_an_outage_is_a_window_of_failures_of_several_urls_without_any_answer() -> None:
    detector = OutageDetector(window=10.0)
    assert not detector.failed(100.0, "/a")
    assert not detector.failed(105.0, "/b")
    detector.answered()  # one answer in between: the window starts again
    assert not detector.failed(109.0, "/a")
    assert not detector.failed(118.9, "/b")
    assert detector.failed(119.0, "/a")


def test_resources_failing_on_their_own_while_others_work_are_not_an_outage() -> None:
    """Issue 24: URLs that never worked fail; those that worked are idle. Not an outage,
    until a URL that worked lately fails too, or nothing has been answered for long."""
    detector = OutageDetector(window=10.0)
    detector.answered(0.0, "/healthy")
    assert not detector.failed(10.0, "/bad1")
    assert not detector.failed(25.0, "/bad2")  # the window passed: two URLs, never answered
    assert detector.failed(26.0, "/healthy")  # a URL that worked fails too: the API is down
    detector.answered(30.0, "/healthy")
    assert not detector.failed(40.0, "/bad1")
    assert not detector.failed(55.0, "/bad2")
    # Nothing answered for ten windows: however the failures look, the API is down.
    assert detector.failed(130.0, "/bad1")


def test_one_url_failing_alone_is_not_an_outage() -> None:
    detector = OutageDetector(window=1.0)
    assert not detector.failed(0.0, "/a")
    assert not detector.failed(5.0, "/a")
    assert detector.window_passed(5.0)


class Api:
    """What the probe gets: the next answer in `answers` (the last one repeats)."""

    def __init__(self, *answers: ApiError | None) -> None:
        self.answers = list(answers)
        self.probes = 0

    async def probe(self) -> ApiError | None:
        self.probes += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class ManualClock:
    """Time that moves only when the test moves it (`advance`); `sleep` on it returns once it
    has moved far enough. `asked`: every sleep's length, in order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.asked: asyncio.Queue[float] = asyncio.Queue()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.asked.put_nowait(seconds)
        wake = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, wake)
        self._sleepers.append(entry)
        try:
            await wake
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for due, wake in self._sleepers:
            if due <= self.now and not wake.done():
                wake.set_result(None)


def gate_for(
    api: Api,
    token: TokenSource | None = None,
    window: float = 0.3,
    clock: ManualClock | None = None,
    max_delay: float = 0.02,
) -> ApiGate:
    if clock is None:
        return ApiGate(
            token or TokenSource(SecretStr("t")),
            api.probe,
            outage_window=window,
            base_delay=0.01,
            max_delay=max_delay,
        )
    return ApiGate(
        token or TokenSource(SecretStr("t")),
        api.probe,
        outage_window=window,
        base_delay=0.01,
        max_delay=max_delay,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_it_starts_closed_and_opens_on_the_first_answered_probe() -> None:
    api = Api(ServerError("down", status=503), None)
    gate = gate_for(api)
    assert gate.reason is Closed.STARTING and not gate.is_open
    prober = asyncio.create_task(gate.run())
    await asyncio.wait_for(gate.wait_open(), 2)
    prober.cancel()
    assert api.probes == 2 and gate.closings == 0


async def test_a_401_closes_it_until_a_probe_with_the_fixed_token_file_is_accepted(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong")
    token = TokenSource(path=token_file)
    accepted = {"right"}

    async def probe() -> ApiError | None:
        return None if token.value() in accepted else Unauthorized("no", status=401)

    gate = ApiGate(token, probe, outage_window=1, base_delay=0.01, max_delay=0.02)
    prober = asyncio.create_task(gate.run())
    await until(lambda: gate.reason is Closed.UNAUTHORIZED)
    assert gate.describe() == "LaunchDarkly refuses the API token (HTTP 401)"  # 401 said once
    token_file.write_text("right\n")
    await asyncio.wait_for(gate.wait_open(), 2)
    prober.cancel()


async def test_an_outage_closes_it_and_waiting_batches_learn_it_reopened() -> None:
    api = Api(None)
    gate = gate_for(api)
    await gate.probe_now()
    prober = asyncio.create_task(gate.run())
    api.answers = [ServerError("down", status=503)]
    settled = asyncio.create_task(gate.settle())  # a batch out of budget asks
    # The window passes with no answer, the settle's probe fails: the API is down.
    await until(lambda: gate.reason is Closed.UNAVAILABLE)
    assert not settled.done()  # it waits for the gate to open
    api.answers = [None]
    assert await asyncio.wait_for(settled, 2) is Verdict.REOPENED
    assert gate.is_open and gate.closings == 1
    prober.cancel()


async def test_a_batch_out_of_budget_fails_when_other_writes_are_answered() -> None:
    api, clock = Api(None), ManualClock()
    gate = gate_for(api, window=60, clock=clock)
    await gate.probe_now()
    gate.failed(ServerError("one resource", status=500), "/a")
    clock.advance(10)
    settled = asyncio.create_task(gate.settle())
    assert await asyncio.wait_for(clock.asked.get(), 2) == 50  # the rest of the window
    clock.advance(49.9)
    assert not settled.done()  # the probe's read is no evidence that writes work
    gate.answered()  # another write is answered: this request failed on its own
    assert await asyncio.wait_for(settled, 2) is Verdict.ANSWERING
    assert gate.is_open and gate.closings == 0


async def test_writes_to_several_urls_failing_with_no_answer_are_an_outage() -> None:
    api = Api(None)
    gate = gate_for(api, window=0.2)
    await gate.probe_now()
    prober = asyncio.create_task(gate.run())
    gate.failed(ServerError("writes down", status=503), "/a")
    gate.failed(ServerError("writes down", status=503), "/b")
    # The probe's read works: the gate reopens after each closing, and the batch tries again.
    assert await asyncio.wait_for(gate.settle(), 2) is Verdict.REOPENED
    assert gate.closings == 1 and gate.is_open
    prober.cancel()


async def test_one_url_failing_while_the_api_answers_its_probe_failed_alone() -> None:
    api = Api(None)
    gate = gate_for(api, window=0.2)
    await gate.probe_now()
    gate.failed(ServerError("this segment", status=500), "/a")
    assert await asyncio.wait_for(gate.settle(), 2) is Verdict.ANSWERING
    assert gate.closings == 0 and api.probes == 2


async def test_one_url_failing_while_the_probe_fails_too_is_an_outage() -> None:
    api = Api(None)
    gate = gate_for(api, window=0.2)
    await gate.probe_now()
    prober = asyncio.create_task(gate.run())
    api.answers = [ServerError("down", status=503), ServerError("down", status=503), None]
    gate.failed(ServerError("down", status=503), "/a")
    assert await asyncio.wait_for(gate.settle(), 2) is Verdict.REOPENED
    assert gate.closings == 1
    prober.cancel()


async def test_batches_settling_together_do_not_spin() -> None:
    api = Api(None)
    gate = gate_for(api, window=0.6)
    await gate.probe_now()
    prober = asyncio.create_task(gate.run())
    gate.failed(ServerError("down", status=503), "/a")
    gate.failed(ServerError("down", status=503), "/b")
    cpu = time.process_time()
    settled = await asyncio.wait_for(asyncio.gather(gate.settle(), gate.settle()), 3)
    assert settled == [Verdict.REOPENED, Verdict.REOPENED]
    assert time.process_time() - cpu < 0.3  # waited out the window, not busily
    prober.cancel()


async def test_a_gate_closed_again_soon_after_opening_backs_off() -> None:
    """Writes refused (401) while the probe's read is answered: no flapping at probe pace.
    The prober waits longer after each such closing (base 0.01 s, doubling, up to 1 s), and
    starts from the base again after a closing that comes once the gate stayed open long."""
    api, clock = Api(None), ManualClock()
    gate = gate_for(api, clock=clock, max_delay=1.0)
    prober = asyncio.create_task(gate.run())
    await asyncio.wait_for(gate.wait_open(), 2)
    waits = []
    for _ in range(9):  # every write is refused as soon as the gate opens
        gate.unauthorized()
        waits.append(await asyncio.wait_for(clock.asked.get(), 2))  # no probe before it
        assert not gate.is_open and api.probes == len(waits)
        clock.advance(waits[-1])
        await asyncio.wait_for(gate.wait_open(), 2)  # then one probe opens it
    ceilings = [min(1.0, 0.01 * 2**n) for n in range(9)]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    clock.advance(1.0)  # open for a while: a closing now is no flapping
    gate.unauthorized()
    await asyncio.wait_for(gate.wait_open(), 2)  # probed at once
    assert api.probes == 11 and clock.asked.empty()
    prober.cancel()


async def test_a_429_or_another_answer_is_not_an_outage() -> None:
    api = Api(None)
    gate = gate_for(api, window=0.0)
    await gate.probe_now()
    gate.answered()
    for error in (RateLimited("slow", retry_after=1), BadRequest("no", status=400)):
        assert not error.outage
    gate.failed(ServerError("down", status=502), "/a")
    gate.failed(ServerError("down", status=502), "/b")  # a zero window: two URLs close it
    assert gate.reason is Closed.UNAVAILABLE


async def test_what_a_request_tells_the_gate() -> None:
    api = Api(None)
    gate = gate_for(api, window=0.0)
    await gate.probe_now()
    for answer in (None, BadRequest("no", status=400), RateLimited("slow", retry_after=1)):
        gate.report(answer, "/a")
        gate.report(ServerError("down", status=503), "/b")
        assert gate.is_open  # an answer in between: no outage
    gate.report(ServerError("down", status=503), "/a")
    assert gate.reason is Closed.UNAVAILABLE  # two URLs failed, with no answer between
    await gate.probe_now()
    gate.report(Unauthorized("no", status=401), "/a")
    assert gate.reason is Closed.UNAUTHORIZED and gate.closings == 2
