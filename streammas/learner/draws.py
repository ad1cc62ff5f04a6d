"""Uniform integer draws from a :class:`random.Random`, a fraction of ``randrange``'s cost.

The replay memory draws on the host, from its own :class:`random.Random` (whose state its ``state_dict`` saves), a
slot for each new sample and a stored sample for each replayed one: a hundred or more draws a step, where
``randrange`` costs about half a microsecond each. A draw here is ``int(random() * bound)``, taken from the same
generator: the sample ``random()`` returns, scaled. For many draws at once the generator's 32-bit words come in one
``getrandbits`` call and NumPy assembles them into the very doubles ``random()`` would have returned (CPython builds
each from two words, ``(a >> 5) * 2**26 + (b >> 6)`` over ``2**53``), so the two paths give the same draws and
leave the generator in the same state: which one runs is a matter of speed only.

``int(random() * bound)`` is not exactly uniform, where ``randrange``'s slower rejection loop is: the ``2**53``
doubles ``random()`` returns fall unevenly on ``bound`` integers, the likeliest about ``1 + bound / 2**53`` times as
likely as the least. That is ``1 + 1e-10`` for a replay draw from a million stored samples and ``1 + 1e-6`` for a
reservoir's draw at the ten-billionth sample of a stream: negligible beside the sampling noise it adds to. It never
reaches ``bound``: the largest product, ``(1 - 2**-53) * bound``, rounds below ``bound`` for every ``bound`` up to
``2**53``.

Examples
--------
>>> import random
>>> a, b = random.Random(7), random.Random(7)
>>> below(a, 10, 3).tolist() == [int(b.random() * 10) for _ in range(3)]
True
>>> below(a, np.arange(1, 101), 100).tolist() == [int(b.random() * n) for n in range(1, 101)]
True
>>> a.getstate() == b.getstate()
True
"""

from __future__ import annotations

import random

import numpy as np

__all__ = ["below", "below_one"]

#: From this many draws on, one ``getrandbits`` call and NumPy beat a Python loop over ``random()`` (about 5 us
#: of fixed cost against about 0.13 us a draw; the two cross near 36 draws on the CPU of the benchmarks).
VECTOR_FROM = 36

_TWO_POW_26 = float(1 << 26)
_TWO_POW_MINUS_53 = 1.0 / (1 << 53)


def below_one(generator: random.Random, bound: int) -> int:
    """One draw uniform in ``[0, bound)`` (up to the module's ``2**-53`` bias)."""
    return int(generator.random() * bound)


def below(generator: random.Random, bound: int | np.ndarray, count: int) -> np.ndarray:
    """``count`` draws, the i-th uniform in ``[0, bound)`` or ``[0, bound[i])``, as ``int64``.

    Parameters
    ----------
    generator : random.Random
        The generator drawn from; it advances exactly as ``count`` calls of its ``random()`` would advance it.
    bound : int or numpy.ndarray
        One bound for every draw, or ``count`` bounds (each at least 1).
    count : int
        Draws made.

    Returns
    -------
    numpy.ndarray
        ``int(random() * bound)`` for each of ``count`` successive ``random()`` of ``generator``.
    """
    if count < VECTOR_FROM:
        draw = generator.random
        if isinstance(bound, np.ndarray):
            return np.array([int(draw() * b) for b in bound.tolist()], dtype=np.int64)
        return np.array([int(draw() * bound) for _ in range(count)], dtype=np.int64)
    # getrandbits fills its integer with 32-bit words from the least significant up, in the order the generator
    # makes them: little-endian bytes give the words in that order, two to a random().
    words = np.frombuffer(generator.getrandbits(64 * count).to_bytes(8 * count, "little"), dtype="<u4")
    uniform = ((words[0::2] >> 5) * _TWO_POW_26 + (words[1::2] >> 6)) * _TWO_POW_MINUS_53
    return (uniform * bound).astype(np.int64)
