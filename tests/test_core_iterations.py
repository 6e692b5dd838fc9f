"""Unit tests of the compact per-iteration states of a large job (qcg_hier.core.job.IterStates):
every operation against a plain bytearray of one code per iteration, with small pages so that
every case (hot page, open pages, runs, lone ends, the bulk-ended tail) comes up often; and the
randomized scheduler runs of test_core_scheduler with every job on IterStates."""
import random

import pytest

from qcg_hier.core import job as job_module
from qcg_hier.core.job import LONE_LIMIT, IterStates
from qcg_hier.core.states import CODE_OF, STATE_CODES, JobState
from test_core_scheduler import _random_run, check

FINAL = [CODE_OF[s] for s in (JobState.SUCCEED, JobState.FAILED, JobState.CANCELED, JobState.OMITTED)]
OK = CODE_OF[JobState.SUCCEED]


def _same(states: IterStates, ref: bytearray, where=None) -> None:
    states.validate()
    assert states.tally() == [ref.count(c) for c in range(len(STATE_CODES))]
    for i in (range(len(ref)) if where is None else where):
        assert states.get(i) == ref[i], (i, states.get(i), ref[i])
        assert states[i] == ref[i]


def _fuzz(seed: int, size: int, bits: int, steps: int) -> None:
    rng = random.Random(seed)
    states, ref = IterStates(size, origin=rng.choice([0, 7]), bits=bits), bytearray(size)
    cursor = 0  # next iteration to "start" in order
    running = []
    for step in range(steps):
        op = rng.random()
        touched = []
        if op < 0.55:  # in order: start a few, end one of those running (not always the oldest)
            while cursor < size and len(running) < rng.choice([1, 3, 8, 40]):
                if not ref[cursor]:
                    running.append(cursor)
                cursor += 1
            if running:
                i = running.pop(min(len(running) - 1, int(rng.expovariate(0.5))))
                code = OK if rng.random() < 0.8 else rng.choice(FINAL)
                states.set(i, code)
                ref[i] = code
                touched.append(i)
        elif op < 0.65:  # a single iteration far away (cancel of `job:N`)
            i = rng.randrange(size)
            if not ref[i] and i not in running:
                code = rng.choice(FINAL)
                states.set(i, code)
                ref[i] = code
                touched.append(i)
        elif op < 0.7:  # ended again (a governor gave it once more)
            ended = [i for i in range(max(0, cursor - 50), cursor) if ref[i]]
            if ended:
                i = rng.choice(ended)
                code = rng.choice(FINAL)
                states.set(i, code)
                ref[i] = code
                touched.append(i)
        elif op < 0.8:  # a range restored from the journal: never-ended iterations, at the cursor or anywhere
            a = cursor if rng.random() < 0.6 else rng.randrange(size)
            b = a
            limit = a + rng.choice([1, 5, 1 << bits, 3 << bits, size])
            while b < min(size, limit) and not ref[b] and b not in running:
                b += 1
            if a < b:
                code = rng.choice(FINAL)
                states.set_range(a, b, code)
                ref[a:b] = bytes([code]) * (b - a)
                touched += [a, b - 1]
                if a == cursor:
                    cursor = b
        elif op < 0.8 + (0.01 if step > steps // 2 else 0.002):  # what has not started ends in bulk
            lo = cursor if rng.random() < 0.7 else rng.randrange(size)
            code = rng.choice(FINAL)
            states.fill(lo, code)
            for i in range(lo, size):
                ref[i] = ref[i] or code
            running = [i for i in running if i < lo]  # (at lo or above: they had not started)
            touched.append(lo)
        else:
            touched += [rng.randrange(size) for _ in range(5)]
        near = {j for i in touched for j in (i - 1, i, i + 1) if 0 <= j < size}
        _same(states, ref, sorted(near) if step % 25 else None)
    for i in list(running):  # everything ends
        states.set(i, OK)
        ref[i] = OK
    states.fill(0, CODE_OF[JobState.CANCELED])
    for i in range(size):
        ref[i] = ref[i] or CODE_OF[JobState.CANCELED]
    _same(states, ref)
    states.compact()  # (the job ended)
    _same(states, ref)
    assert not states.open and (states.low == states.npages or states.low >= states.fill_page)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(8))
def test_states_match_a_bytearray_small_pages(seed, bits):
    size = random.Random(seed * 31 + bits).randrange(1, 60 << bits)
    _fuzz(seed, size=size, bits=bits, steps=600)


@pytest.mark.parametrize("seed", range(3))
def test_states_match_a_bytearray_real_pages(seed):
    _fuzz(seed, size=3 * job_module.PAGE + 17, bits=job_module.PAGE_BITS, steps=300)


def test_in_order_ends_keep_one_run_and_few_pages():
    states = IterStates(10 ** 12, bits=12)
    running = list(range(300))
    nxt = 300
    rng = random.Random(1)
    for _ in range(100_000):
        i = running.pop(rng.randrange(min(len(running), 50)))
        states.set(i, OK if i % 10_000 else CODE_OF[JobState.FAILED])
        running.append(nxt)
        nxt += 1
    states.validate()
    # arrays: the few pages the running ones are in, and the pages where an iteration failed
    mixed = {i >> 12 for i in range(0, nxt, 10_000)}
    assert len(set(states.pages) - mixed) <= 3, sorted(states.pages)
    assert len(states.run_ends) == 1 and states.low >= (running[0] >> 12) - 1
    assert states.get(10 ** 12 - 1) == 0 and states.get(5) == OK and states.get(10_000) == CODE_OF[JobState.FAILED]
    states.fill(nxt, CODE_OF[JobState.CANCELED])
    assert states.get(10 ** 12 - 1) == CODE_OF[JobState.CANCELED] and states.get(running[0]) == 0
    tally = states.tally()
    assert tally[OK] + tally[CODE_OF[JobState.FAILED]] == 100_000 and tally[0] == len(running)


def test_single_ends_far_away_cost_no_page():
    states = IterStates(10 ** 12, bits=12)
    for k in range(1, 200):
        states.set(k * 10 ** 9, CODE_OF[JobState.CANCELED])
    assert not states.pages and len(states.lone) == 199
    for k in range(LONE_LIMIT + 1):  # many in one page: it gets its array
        states.set(5 * 10 ** 9 + 1 + k, CODE_OF[JobState.CANCELED])
    assert list(states.pages) == [(5 * 10 ** 9) >> 12] and len(states.lone) == 198
    assert states.get(7 * 10 ** 9) == CODE_OF[JobState.CANCELED] and states.get(7 * 10 ** 9 + 1) == 0
    states.validate()


def test_a_restored_range_of_whole_pages_costs_no_array():
    states = IterStates(10 ** 12, bits=12)
    states.set_range(0, 10 ** 10 + 5, OK)
    assert states.run_ends == [(10 ** 10) >> 12] and len(states.pages) == 1
    states.set_range(10 ** 10 + 5, 10 ** 12, CODE_OF[JobState.FAILED])
    states.validate()
    assert states.tally()[OK] == 10 ** 10 + 5 and states.tally()[CODE_OF[JobState.FAILED]] == 10 ** 12 - 10 ** 10 - 5
    assert not states.pages or all(type(p) is bytearray for p in states.pages.values())
    assert len(states.pages) <= 1
    states = IterStates(10 ** 12, bits=12)
    states.set_range(0, 8192, OK)
    states.set_range(8192, 4096 * 10 ** 6, OK)  # the same run goes on
    assert states.run_ends == [10 ** 6] and list(states.run_codes) == [OK] and not states.pages
    with pytest.raises(IndexError):
        states[10 ** 12]


@pytest.mark.parametrize("bits", [1, 12])
@pytest.mark.parametrize("seed", range(4))
def test_random_scheduler_runs_on_compact_states(seed, bits, monkeypatch):
    """test_core_scheduler's randomized runs, every job on IterStates (tiny pages: many of them),
    give every iteration the state a plain bytearray gives it."""
    plain = _random_run(seed)
    monkeypatch.setattr(job_module, "PAGE", 0)
    monkeypatch.setattr(job_module, "PAGE_BITS", bits)
    monkeypatch.setattr(job_module, "LONE_LIMIT", 2)
    compact = _random_run(seed)
    check(compact)
    assert list(plain.jobs) == list(compact.jobs)
    for name, job in compact.jobs.items():
        assert isinstance(job.it_states, (IterStates, type(None))), name
        other = plain.jobs[name]
        assert [job.iteration_state(i) for i in range(job.start, job.stop)] == \
               [other.iteration_state(i) for i in range(other.start, other.stop)], name
        assert job.counts == other.counts and job.state is other.state
    assert compact.it_counts == plain.it_counts
