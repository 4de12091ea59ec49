"""edgeport's sampling rule (core/llm/sampling.py), the one runner.c follows too: the
generator's stream, greedy limits, and the distribution it draws from."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.llm.sampling import Sampler, Sampling, SplitMix64

LOGITS = np.array([2.0, 1.0, 0.5, 2.0, -1.0, 0.0], dtype=np.float32)


def draws(sampling: Sampling, n: int, logits: np.ndarray = LOGITS) -> list[int]:
    sampler = Sampler(sampling)
    return [sampler.pick(logits) for _ in range(n)]


def test_splitmix64_gives_the_published_stream():
    """Seed 1234567: the published reference outputs (Rosetta Code's SplitMix64 task)."""
    rng = SplitMix64(1234567)
    assert [rng.next_u64() for _ in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_uniform_is_the_top_53_bits():
    rng, twin = SplitMix64(7), SplitMix64(7)
    assert rng.uniform() == (twin.next_u64() >> 11) / 2.0**53
    assert all(0.0 <= rng.uniform() < 1.0 for _ in range(1000))


def test_the_same_seed_gives_the_same_ids_and_another_seed_others():
    a = draws(Sampling(1.0, 0.95, seed=42), 64)
    assert a == draws(Sampling(1.0, 0.95, seed=42), 64)
    assert a != draws(Sampling(1.0, 0.95, seed=43), 64)


def test_without_a_seed_one_is_drawn_and_repeats_the_run():
    sampler = Sampler(Sampling(0.8, 0.9))
    first = [sampler.pick(LOGITS) for _ in range(32)]
    assert 0 <= sampler.seed < 1 << 64
    assert draws(Sampling(0.8, 0.9, seed=sampler.seed), 32) == first


@pytest.mark.parametrize("seed", [np.int64(42), np.uint64(42), np.int8(42)])
def test_a_numpy_integer_seed_draws_as_the_same_python_int(seed):
    """np.int64 passed the seed check, then overflowed in SplitMix64 (OverflowError)."""
    sampling = Sampling(1.0, 0.95, seed=seed)
    assert type(sampling.seed) is int and Sampler(sampling).seed == 42
    assert draws(sampling, 16) == draws(Sampling(1.0, 0.95, seed=42), 16)


@pytest.mark.parametrize("sampling", [Sampling(0.0, 1.0, 5), Sampling(1.0, 1e-9, 5), Sampling(50.0, 1e-9, 5)])
def test_temperature_zero_and_a_tiny_top_p_are_greedy_equal_logits_by_lower_id(sampling):
    assert set(draws(sampling, 50)) == {0}  # ids 0 and 3 tie for the largest logit
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert set(draws(sampling, 20, logits)) == {int(np.argmax(logits))}


def test_draws_follow_the_tempered_softmax():
    temperature, n = 0.7, 40_000
    expected = np.exp(LOGITS.astype(np.float64) / temperature)
    expected /= expected.sum()
    counts = np.bincount(draws(Sampling(temperature, 1.0, 3), n), minlength=len(LOGITS))
    sigma = np.sqrt(n * expected * (1 - expected))
    assert np.all(np.abs(counts - n * expected) < 5 * sigma + 1), (counts, n * expected)


def test_top_p_keeps_the_smallest_nucleus_renormalised():
    """p = softmax(LOGITS) in logit order: ids 0, 3 (0.360 each), 1 (0.133), ... With top_p
    0.8 the nucleus is 0, 3 and 1 (0.720 < 0.8 <= 0.853); the rest are never drawn."""
    p = np.exp(LOGITS.astype(np.float64))
    p /= p.sum()
    n = 20_000
    counts = np.bincount(draws(Sampling(1.0, 0.8, 9), n), minlength=len(LOGITS))
    assert counts[[2, 4, 5]].sum() == 0
    kept = p[[0, 3, 1]] / p[[0, 3, 1]].sum()
    sigma = np.sqrt(n * kept * (1 - kept))
    assert np.all(np.abs(counts[[0, 3, 1]] - n * kept) < 5 * sigma), counts
