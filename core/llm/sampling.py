"""How the next token is picked from logits: edgeport's one sampling rule.

Two implementations follow this rule token for token: `Sampler` here (the Python
session) and ``sample`` in native/runner.c (`edgeport llm generate --native`). Hence a
rule of edgeport's own rather than numpy's generator, whose PCG64 and SeedSequence a
C runner cannot sanely reproduce. The rule (docs/llm.md, "Sampling"):

- temperature 0: the largest logit, the lowest id among equal ones (greedy);
- else, in float64: z = logit / temperature, w = exp(z - max z); the tokens ordered by
  logit, largest first, equal logits by lower id (the order of their probabilities);
  c = the running sum of w in that order; the nucleus is the tokens up to the first
  whose c reaches top_p * (the sum of all w);
- the draw: u, a uniform double in [0, 1) from SplitMix64 seeded with ``seed`` (the top
  53 bits of the next 64-bit output, times 2^-53); the token is the first in the nucleus
  whose c exceeds u * (the nucleus's c).

One draw per sampled token. Without a seed, one comes from the OS (`new_seed`); the CLI
prints it (JSON "seed") so a run can be repeated. Ordering by logit, not by the computed
probability, keeps the order exact everywhere; numpy's and the C library's ``exp`` may
still differ in the last bit, which moves a boundary by ~1e-16 of the total: a draw that
close to one could pick the neighbouring token (odds of order 1e-15 per token).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy at temperature 0, else sampled from the
    smallest set of tokens whose probability reaches ``top_p`` (the module's rule);
    ``seed`` None takes one from the OS."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        """Refuse what the rule has no meaning for: a temperature of -1 or nan ran
        greedy, a top_p of 5 or nan as 1, without a word (the CLI's ranges, here too)."""
        if not _real(self.temperature) or not 0 <= self.temperature < float("inf"):
            raise InputError(f"temperature must be a number of 0 or more, got {self.temperature!r}",
                             hint="0 picks the likeliest token; 0.7 is a common sampling temperature")
        if not _real(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be a number above 0 and at most 1, got {self.top_p!r}",
                             hint="1 samples from every token; 0.9 from the likeliest ones that make up 90%")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if self.seed is not None and not 0 <= int(self.seed) < 2**64:  # taken modulo 2^64, 2^64 + 5 was 5's run
            raise InputError(f"seed must be 0 to 2^64-1, as the CLI's --seed, got {self.seed}",
                             hint="pass the seed a run printed (its JSON \"seed\")")
        if self.seed is not None:  # a numpy integer overflowed in SplitMix64's 64-bit arithmetic
            object.__setattr__(self, "seed", int(self.seed))


def _real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def new_seed() -> int:
    """A seed from the OS: 64 random bits."""
    return secrets.randbits(64)


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64: a 64-bit state that advances by a constant,
    each output a mix of it. Small enough to write the same in C (runner.c)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A double in [0, 1): the output's top 53 bits, times 2^-53."""
        return (self.next_u64() >> 11) * 2.0**-53


class Sampler:
    """Picks tokens by ``sampling``; ``seed`` is the one in use (drawn if none was given)."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.seed = new_seed() if sampling.seed is None else sampling.seed & _MASK64
        self._rng = SplitMix64(self.seed)

    def pick(self, logits: np.ndarray) -> int:
        """The next token from ``logits`` (vocab,)."""
        temperature, top_p = self.sampling.temperature, self.sampling.top_p
        if temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        weights = np.exp(z - z.max())
        order = np.argsort(-logits, kind="stable")  # by logit, largest first; equal ones by lower id
        running = np.cumsum(weights[order])
        last = min(int(np.searchsorted(running, top_p * running[-1], side="left")), len(running) - 1)
        target = self._rng.uniform() * running[last]
        chosen = int(np.searchsorted(running[: last + 1], target, side="right"))
        return int(order[min(chosen, last)])  # u * c may round up to c itself
