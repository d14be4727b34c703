"""The residency plan on its own: a snapshot of slots in, an action out, no manager."""

from __future__ import annotations

import asyncio

from crew.residency.planning import Grant, Load, Situation, Wait, plan
from crew.residency.queue import URGENT, Waiter
from crew.residency.slots import Slot

GB = 10**9


def _slot(name: str, gb: int, *, pins: int = 0, state: str = "resident") -> Slot:
    slot = Slot(name, gb * GB, state, ours=True, last_used=0.0)  # type: ignore[arg-type]
    slot.pins = pins
    return slot


def _now(*slots: Slot, budget_gb: int = 48, need_gb: int = 19, wanted: frozenset[str] = frozenset(),
         starving: Waiter | None = None, head: Waiter | None = None) -> Situation:
    return Situation(slots={s.name: s for s in slots}, budget=budget_gb * GB, need=need_gb * GB,
                     starving=starving, load_head=head, wanted=wanted)


def _waiter(model: str) -> Waiter:
    return Waiter(model=model, owner="t", priority=0, seq=1)


def _largest(candidates: list[Slot], shortfall: int) -> list[Slot] | None:
    return sorted(candidates, key=lambda s: -s.size)[:1]


def test_a_resident_model_is_granted_without_asking_the_eviction_policy() -> None:
    coder = _slot("coder", 19)
    decided = plan(_waiter("coder"), _now(coder), lambda c, n: [])
    assert decided == Grant(coder)


def test_a_model_that_fits_loads_and_evicts_nothing() -> None:
    assert plan(_waiter("coder"), _now(_slot("reviewer", 9)), lambda c, n: None) == Load([])


def test_a_model_that_does_not_fit_evicts_what_the_policy_chooses_among_idle_models() -> None:
    architect, reviewer = _slot("architect", 30), _slot("reviewer", 9, pins=1)
    decided = plan(_waiter("coder"), _now(architect, reviewer), _largest)
    assert decided == Load([architect])  # the pinned reviewer was never a candidate


def test_models_others_wait_for_are_spared_and_the_request_waits_for_them() -> None:
    architect = _slot("architect", 40)
    decided = plan(_waiter("coder"), _now(architect, wanted=frozenset({"architect"})), _largest)
    assert decided == Wait(["architect"])


def test_only_pinned_models_in_the_way_means_waiting_for_their_release() -> None:
    decided = plan(_waiter("coder"), _now(_slot("architect", 40, pins=1)), _largest)
    assert decided == Wait(["architect"])


def test_a_starving_load_stops_grants_of_other_resident_models() -> None:
    coder = _slot("coder", 19)
    starving = _waiter("architect")
    decided = plan(_waiter("coder"), _now(coder, starving=starving, head=starving), _largest)
    assert decided == Wait(["architect"], for_room=False)


def test_loads_start_in_arrival_order() -> None:
    decided = plan(_waiter("coder"), _now(head=_waiter("reviewer")), _largest)
    assert decided == Wait()


def test_joining_a_load_in_flight() -> None:
    async def joined() -> None:
        loading = _slot("coder", 19, state="loading")
        loading.task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        decided = plan(_waiter("coder"), _now(loading), _largest)
        assert getattr(decided, "task", None) is loading.task
        await loading.task

    asyncio.run(joined())


def test_a_critical_request_for_a_resident_model_never_waits_for_a_starving_load() -> None:
    coder = _slot("coder", 19)
    starving = _waiter("architect")
    critical = Waiter(model="coder", owner="t", priority=URGENT, seq=2)
    assert plan(critical, _now(coder, starving=starving, head=starving), _largest) == Grant(coder)
    high = Waiter(model="coder", owner="t", priority=URGENT - 1, seq=3)
    decided = plan(high, _now(coder, starving=starving, head=starving), _largest)
    assert decided == Wait(["architect"], for_room=False)
