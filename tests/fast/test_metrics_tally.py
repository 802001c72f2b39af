"""engine.metrics tallies: counted in ints, handed over at a scrape, the series read as
direct updates would have left them (this also pins the prometheus_client internals that
``HistogramTally.flush`` writes: a child's bucket values and its sum)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.metrics import LATENCY_BUCKETS, CounterTally, HistogramTally

SECONDS = st.one_of(st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: that bucket
                    st.floats(min_value=0, max_value=5, allow_nan=False))
LABELS = st.sampled_from([("a", "GET"), ("b", "POST"), ("a", "POST")])


def _samples(registry: CollectorRegistry) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples}


def _pair(kind, *args, **kw):
    """The same metric in two registries: one updated directly, one through a tally."""
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    return (kind(*args, registry=direct, **kw), direct), (kind(*args, registry=tallied, **kw),
                                                          tallied)


@given(st.lists(st.tuples(LABELS, SECONDS), max_size=60), st.integers(0, 60))
def test_a_histogram_tally_reads_as_direct_observations(seen, flush_at) -> None:
    (direct, direct_reg), (target, tallied_reg) = _pair(
        Histogram, "h_seconds", "h", ["route", "method"], buckets=LATENCY_BUCKETS)
    tally = HistogramTally(target, LATENCY_BUCKETS, deferred=True)
    for i, (labels, seconds) in enumerate(seen):
        if i == flush_at:
            tally.flush()  # a scrape in between changes nothing
        direct.labels(*labels).observe(seconds)
        tally.observe(labels, seconds)
    tally.flush()
    got, want = _samples(tallied_reg), _samples(direct_reg)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


@given(st.lists(LABELS, max_size=80), st.integers(0, 80))
def test_a_counter_tally_reads_as_direct_steps(steps, flush_at) -> None:
    (direct, direct_reg), (target, tallied_reg) = _pair(
        Counter, "c", "c", ["route", "method"])
    tally = CounterTally(target, deferred=True)
    for i, labels in enumerate(steps):
        if i == flush_at:
            tally.flush()
        direct.labels(*labels).inc()
        tally.inc(labels)
    tally.flush()
    assert _samples(tallied_reg) == _samples(direct_reg)


def test_an_unlabelled_histogram_and_pass_through() -> None:
    (direct, direct_reg), (target, tallied_reg) = _pair(
        Histogram, "u_seconds", "u", buckets=LATENCY_BUCKETS)
    tally = HistogramTally(target, LATENCY_BUCKETS, deferred=False)  # several workers
    for seconds in (0.0001, 0.003, 7.0):
        direct.observe(seconds)
        tally.observe((), seconds)
    assert _samples(tallied_reg) == _samples(direct_reg)  # no flush needed
