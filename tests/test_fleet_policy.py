"""crew's residency policy for a fleet (`crew.fleet.policy`): which host a request goes to.

The policy is pure; these run in the fast suite. `test_fleet.py` runs it inside Ray Serve.
"""

from __future__ import annotations

from typing import Any

from crew.fleet.policy import HostState, Want, bound, rank

GB = 1_000_000_000


def host(name: str, budget: float = 48, resident: dict[str, float] | None = None,
         busy: dict[str, int] | None = None, up: bool = True) -> HostState:
    res = {m: int(g * GB) for m, g in (resident or {}).items()}
    return HostState(host=name, up=up, budget=int(budget * GB), used=sum(res.values()), resident=res,
                     busy=busy or {}, received={})


def want(model: str, gb: float, **kw: Any) -> Want:
    return Want(model, int(gb * GB), **kw)


def test_resident_first_then_fits_then_cheapest_eviction() -> None:
    h1 = host("h1", resident={"a": 30})
    h2 = host("h2", resident={"b": 20, "c": 10})
    assert rank(want("a", 30), [h2, h1]) == ["h1", "h2"]  # resident: no load
    # 14 GB fits in both (18 free on h1, 18 on h2): the smaller hole; tie -> the hosts' order
    assert rank(want("d", 14), [h1, h2])[0] == "h1"
    # 25 GB fits nowhere: h1 must evict 30 GB, h2 only the 10 GB model (10+18 free >= 25)
    assert rank(want("d", 25), [h1, h2]) == ["h2", "h1"]


def test_the_cheapest_eviction_is_in_the_seconds_each_host_measured() -> None:
    # Room for 20 GB needs an eviction on both: 20 GB that reloads in 5 s on a fast disk beats
    # 12 GB that took 30 s to load on the other host; without measurements, bytes decide.
    fast = host("fast", budget=30, resident={"a": 20}).model_copy(update={"reload_s": {"a": 5.0}})
    slow = host("slow", budget=22, resident={"b": 12}).model_copy(update={"reload_s": {"b": 30.0}})
    assert rank(want("c", 20), [slow, fast]) == ["fast", "slow"]
    assert rank(want("c", 20), [host("h1", 30, {"a": 20}), host("h2", 22, {"b": 12})]) == ["h2", "h1"]


def test_never_a_host_the_model_cannot_fit_nor_a_down_or_avoided_one() -> None:
    small = host("small", budget=24)
    big = host("big", budget=64, resident={"x": 60}, busy={"x": 2})
    assert rank(want("a", 52), [small, big]) == ["big"]  # waits on big rather than never fits
    assert rank(want("a", 52), [small, host("big", 64, up=False)]) == []
    assert rank(want("b", 9), [small, big], ) == ["small", "big"]
    assert rank(want("b", 9, avoid=("small",)), [small, big]) == ["big"]


def test_models_in_use_are_not_counted_as_room() -> None:
    busy = host("busy", budget=40, resident={"a": 30}, busy={"a": 1})
    idle = host("idle", budget=40, resident={"b": 35})
    # Either host needs an eviction for 20 GB; only the idle host can evict now.
    assert rank(want("c", 20), [busy, idle]) == ["idle", "busy"]


def test_queued_work_for_a_model_stays_on_one_host() -> None:
    # `a` is queued on h2 (waiting for a load there), not yet resident anywhere; h1 has room.
    h1 = host("h1", budget=48)
    h2 = host("h2", budget=48, resident={"z": 5}, busy={"a": 3})
    assert rank(want("a", 19), [h1, h2])[0] == "h2"


def test_what_was_sent_but_not_yet_reported_counts_as_on_its_way() -> None:
    h1, h2 = host("h1", budget=10), host("h2", budget=10)
    incoming = {"h1": {"a": 6 * GB}}
    # `a` goes where `a` is on its way; `b` no longer fits beside it on h1: h2, no eviction.
    assert rank(want("a", 6), [h1, h2], incoming)[0] == "h1"
    assert rank(want("b", 6), [h1, h2], incoming)[0] == "h2"
    # Once the report shows it received (nothing incoming), h1 has room again.
    assert rank(want("b", 6), [h1, h2], {})[0] == "h1"
    # A model on its way is not idle: it does not count as room for an eviction.
    h3 = host("h3", budget=10, resident={"c": 6})
    assert rank(want("d", 6), [h3], {"h3": {"c": 6 * GB}}) == ["h3"]
    assert rank(want("d", 6), [host("h4", budget=10, resident={"c": 6}), h3], {"h3": {"c": 6 * GB}}) == [
        "h4", "h3"]


def test_a_host_with_more_bound_for_it_than_it_holds_is_not_piled_on() -> None:
    # Both models were sent to h1 (it holds one) before its reports caught up: h2 has room.
    h1, h2 = host("h1", budget=10, resident={"a": 6}), host("h2", budget=10)
    incoming = {"h1": {"a": 6 * GB, "b": 6 * GB}}
    assert rank(want("a", 6), [h1, h2], incoming) == ["h2", "h1"]
    assert rank(want("b", 6), [h1, h2], incoming) == ["h2", "h1"]


def test_a_question_for_one_host_or_for_any() -> None:
    h1 = host("h1", busy={"a": 3})
    h2 = host("h2", up=False)
    h3 = host("h3", busy={"b": 1})
    assert rank(Want(None, host="h2"), [h1, h2, h3]) == ["h2"]  # asked of it even when down
    assert rank(Want(None), [h1, h2, h3]) == ["h3", "h1"]  # least busy live host first


def test_state_from_stats() -> None:
    h = host("h1", resident={"a": 1})
    assert HostState.of(h.model_dump()) == h
    assert HostState.of({}) is None
    assert HostState.of({"host": "h1"}) is None  # an older replica's report: no basis for a choice


def test_while_a_host_has_not_reported_only_where_the_model_already_is() -> None:
    """The router places only these while a replica has not reported (its host may already hold
    the model: a replacement's host keeps its predecessor's models)."""
    h1 = host("h1", budget=10, resident={"a": 7})
    assert bound(want("a", 7), [h1]) == ["h1"]
    # b fits nowhere known without evicting a: no load is decided on half the picture.
    assert rank(want("b", 7), [h1]) == ["h1"] and bound(want("b", 7), [h1]) == []
    # Not even a load into free room: the unreported host may hold the model.
    assert bound(want("b", 2), [h1]) == [] and bound(want("b", 7), [host("h3", budget=10)]) == []
    # Bound there already (queued, or sent and not yet reported): it stays with that host.
    assert bound(want("b", 2), [h1], {"h1": {"b": 2 * GB}}) == ["h1"]
    assert bound(want("a", 7), [h1.model_copy(update={"up": False})]) == []
