"""The quality knob: quality -> quantization gain, and rate control.

Every y slice is coded as q = round((y - mu) * a), with the scale-table index
of float32(sigma * a), and y_hat = q / a + mu feeds LRP and the later slices
(`dcae_deploy.runtime.entropy`). The gain a travels in the `.dcae` header as
the 16-bit `gain_code`, a = float32(gain_code) / 4096 (exact in float32), so
every decoder computes the same a; at gain_code 4096 (a = 1) the arithmetic is
exactly the fixed-rate model's.

A quality Q from 0 to 100 maps onto a model's RATE LEVELS, the gains its
variable-rate training learned (`python -m dcae.train --variable-rate`): Q = 50
lands on the reference level (the fixed-rate model's lambda) at a = 1
exactly (gains count relative to the reference level's), Q = 0 half a
level below the lowest level and Q = 100 half a level above the highest
(`TRAINED_REACH`), linearly in between, with log a interpolated linearly
between neighbouring levels and extrapolated from the end ones. The reach
widens the knob past the trained ends, where a small step in the gain still
codes well, to the usual span of a codec's quality setting. A model trained at
one rate has no levels of its own and gets `UNTRAINED_LEVELS`: a from 1/8 at
Q = 0 to 4 at Q = 100, doubling every 50/3 qualities below 50 and every 25
above.

Rate control (`search_gain_code`) codes the same analysis at several gain
codes and keeps the largest file within the byte target: g_a, h_a, the z
stream and h_s run once, only the slice loop and the entropy coding per try.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, TypeVar

from .container import GAIN_CODE_ONE, MAX_GAIN_CODE
from .errors import BadInputError

MIN_QUALITY, MAX_QUALITY = 0, 100
# The quality that lands on the reference level: the fixed-rate model's rate.
DEFAULT_QUALITY = 50
# Rate control keeps a file of at least this share of the byte target.
TARGET_TOLERANCE = 0.03


# How far past its lowest and highest trained level, in levels, Q = 0 and
# Q = 100 of a variable-rate model lie.
TRAINED_REACH = 0.5


@dataclass(frozen=True)
class RateLevels:
    """A model's rate levels: their gains (ascending), which one Q = 50 is,
    and how far past the end levels (in levels) Q = 0 and Q = 100 lie."""

    gains: tuple[float, ...]
    reference: int
    reach: float = TRAINED_REACH

    def __post_init__(self):
        gains = tuple(float(g) for g in self.gains)
        if len(gains) < 2 or not all(0 < g < math.inf for g in gains) or list(gains) != sorted(set(gains)):
            raise ValueError(f"rate levels need two or more increasing positive gains, got {self.gains!r}")
        if not 0 < self.reference < len(gains) - 1:
            raise ValueError(f"the reference level must lie strictly between the lowest and the highest, "
                             f"got {self.reference} of {len(gains)}")
        if not 0 <= self.reach <= 1:
            raise ValueError(f"the reach past the end levels must be from 0 to 1 level, got {self.reach!r}")
        object.__setattr__(self, "gains", gains)

    @classmethod
    def from_record(cls, record: dict | None) -> "RateLevels":
        """From a checkpoint's or manifest's `{"gains": [...], "reference": i}`
        (None or empty: `UNTRAINED_LEVELS`)."""
        if not record:
            return UNTRAINED_LEVELS
        return cls(tuple(record["gains"]), int(record["reference"]))

    def to_record(self) -> dict:
        return {"gains": list(self.gains), "reference": self.reference}

    def gain(self, quality: float) -> float:
        """The gain a at `quality` (0..100)."""
        quality = check_quality(quality)
        last = len(self.gains) - 1
        # position in levels: -reach at Q = 0, reference at 50, last + reach at 100
        if quality <= DEFAULT_QUALITY:
            position = (self.reference + self.reach) * quality / DEFAULT_QUALITY - self.reach
        else:
            position = self.reference + (last + self.reach - self.reference) * (quality - DEFAULT_QUALITY) / (
                MAX_QUALITY - DEFAULT_QUALITY)
        low = min(max(math.floor(position), 0), last - 1)
        frac = position - low  # below 0 or above 1 past the end levels
        # log gains relative to the reference level's: Q = 50 is a = 1 exactly,
        # the fixed-rate arithmetic (and upstream's .bin)
        reference = math.log(self.gains[self.reference])
        low_log, high_log = math.log(self.gains[low]) - reference, math.log(self.gains[low + 1]) - reference
        return math.exp((1 - frac) * low_log + frac * high_log)

    def gain_code(self, quality: float) -> int:
        """The header's gain_code for `quality`."""
        return gain_code_of(self.gain(quality))

    def code_range(self) -> tuple[int, int]:
        """The range rate control searches: the gain codes of quality 0 and
        100, widened to at least the untrained rule's ends (a from 1/8 to 4)
        where a model's quality range is narrower, so that a size target is
        met wherever a gain can reach it (a cap under quality 0's file, with
        the gain that gets there)."""
        return (min(self.gain_code(MIN_QUALITY), gain_code_of(UNTRAINED_LEVELS.gains[0])),
                max(self.gain_code(MAX_QUALITY), gain_code_of(UNTRAINED_LEVELS.gains[-1])))


# A model without trained levels: a from 1/8 to 4, no reach past them. A
# fixed-rate model's files at a = 1/8 are about 0.1 bpp on Kodak; above a = 1
# a model trained at one rate gains little quality for its bits
# (docs/quality.md), so the top stays at 4.
UNTRAINED_LEVELS = RateLevels((0.125, 1.0, 4.0), 1, reach=0.0)


def check_quality(quality) -> float:
    try:
        value = float(quality)
    except (TypeError, ValueError):
        raise BadInputError(f"quality must be a number from {MIN_QUALITY} to {MAX_QUALITY}, got {quality!r}") from None
    if not MIN_QUALITY <= value <= MAX_QUALITY:  # also refuses NaN
        raise BadInputError(f"quality must be from {MIN_QUALITY} to {MAX_QUALITY}, got {quality!r}")
    return value


def gain_code_of(gain: float) -> int:
    """The nearest gain_code (1..65535) to the gain a."""
    if not gain > 0:
        raise ValueError(f"a gain must be positive, got {gain!r}")
    return int(min(max(round(gain * GAIN_CODE_ONE), 1), MAX_GAIN_CODE))


@dataclass(frozen=True)
class RateChoice:
    """How the user sets the rate: at most one of a quality (0..100), a cap
    on the file's bytes, or a target in bits per pixel; none: quality 50."""

    quality: float | None = None
    max_bytes: int | None = None
    target_bpp: float | None = None

    def __post_init__(self):
        given = [name for name, value in (("quality", self.quality), ("max_bytes", self.max_bytes),
                                          ("target_bpp", self.target_bpp)) if value is not None]
        if len(given) > 1:
            raise BadInputError(f"give one of quality, max_bytes and target_bpp, not {' and '.join(given)}")
        if self.quality is not None:
            object.__setattr__(self, "quality", check_quality(self.quality))
        if self.max_bytes is not None and (isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int)
                                           or self.max_bytes < 1):
            raise BadInputError(f"max_bytes must be a positive whole number, got {self.max_bytes!r}")
        if self.target_bpp is not None:
            try:
                bpp = float(self.target_bpp)
            except (TypeError, ValueError):
                bpp = math.nan
            if not 0 < bpp < 64:
                raise BadInputError(f"target_bpp must be above 0 and under 64, got {self.target_bpp!r}")
            object.__setattr__(self, "target_bpp", bpp)

    @property
    def controlled(self) -> bool:
        """Whether rate control searches the gain (a size target)."""
        return self.max_bytes is not None or self.target_bpp is not None

    def target(self, height: int, width: int) -> "RateTarget | None":
        """Rate control's target for a `height` x `width` image (None: a quality)."""
        if self.max_bytes is not None:
            return RateTarget(self.max_bytes, False, f"--max-bytes {self.max_bytes}")
        if self.target_bpp is not None:
            return RateTarget(max(1, int(self.target_bpp * height * width / 8)), True,
                              f"--target-bpp {self.target_bpp:g}")
        return None

    def gain_code(self, levels: RateLevels) -> int:
        """The gain code of a quality choice (the default quality without one)."""
        if self.controlled:
            raise ValueError("a size target has no fixed gain code")
        return levels.gain_code(DEFAULT_QUALITY if self.quality is None else self.quality)

    def fits(self, nbytes: int, height: int, width: int) -> bool:
        """Whether a file of `nbytes` meets this size target."""
        target = self.target(height, width)
        return target is None or (nbytes <= target.max_bytes and
                                  (not target.exact or nbytes >= target.max_bytes * (1 - TARGET_TOLERANCE)))


@dataclass(frozen=True)
class RateTarget:
    """What rate control aims at: at most `max_bytes`, and with `exact`, at
    least (1 - TARGET_TOLERANCE) of it (a target size rather than a cap)."""

    max_bytes: int
    exact: bool
    what: str  # the option as the user gave it, for messages


@dataclass
class RateSearch:
    """How rate control went: the tries (gain_code, bytes) in order."""

    tries: list[tuple[int, int]]
    gain_code: int  # the one kept

    @property
    def size(self) -> int:
        return dict(self.tries)[self.gain_code]


def search_gain_code(size_at: Callable[[int], int], target: RateTarget, code_range: tuple[int, int],
                     start: int = GAIN_CODE_ONE) -> RateSearch:
    """The largest gain code in `code_range` whose file fits `target`.

    `size_at(code)` codes the image at a gain code and returns the file's
    size. File size grows with the gain, about as a power of it, but not
    strictly at every code, so the search keeps the largest fitting file it
    has seen. Each next try is where the line of log size against log gain
    through the two tries nearest the goal meets the middle of the window,
    kept strictly inside the bracket of codes known to fit and not to fit
    (bisection where the line leaves it). Raises `BadInputError` when even the
    lowest gain's file is over the target, or (for an exact target) the
    highest gain's under it."""
    low_code, high_code = code_range
    sizes: dict[int, int] = {}
    floor = math.ceil(target.max_bytes * (1 - TARGET_TOLERANCE))
    goal = target.max_bytes * (1 - TARGET_TOLERANCE / 2)

    def result(code: int) -> RateSearch:
        return RateSearch(list(sizes.items()), code)

    code = min(max(start, low_code), high_code)
    while True:
        sizes[code] = size_at(code)
        fitting = [c for c, size in sizes.items() if size <= target.max_bytes]
        best = max(fitting, key=lambda c: (sizes[c], c)) if fitting else None
        if best is not None and sizes[best] >= floor:
            return result(best)
        below = max(fitting, default=low_code - 1)  # the bracket: codes known to fit ...
        above = min((c for c in sizes if sizes[c] > target.max_bytes), default=high_code + 1)  # ... and not
        if best is None and low_code in sizes:
            raise BadInputError(f"{target.what} is out of reach: the smallest file this image codes to is "
                                f"{sizes[low_code]} bytes (the lowest gain)")
        if high_code in fitting:
            if not target.exact:  # a cap above what the highest gain needs
                return result(best)
            raise BadInputError(f"{target.what} is out of reach: the highest gain gives "
                                f"{sizes[high_code]} bytes")
        if above - below <= 1:  # neighbouring codes step over the window
            if not target.exact and best is not None:
                return result(best)
            raise BadInputError(f"{target.what} cannot be met within {TARGET_TOLERANCE:.0%}: the nearest "
                                f"file under it has {sizes[best]} bytes" if best is not None else
                                f"{target.what} is out of reach")
        code = _next_try(sizes, goal, below, above, low_code, high_code)


Coded = TypeVar("Coded")


def code_at_rate(code: Callable[[int], Coded], size_of: Callable[[Coded], int], rate: RateChoice,
                 levels: RateLevels, height: int, width: int) -> tuple[Coded, RateSearch | None]:
    """What `rate` asks for of a `height` x `width` image: `code(gain_code)`
    at its quality's gain code, or for a size target at the gain code rate
    control keeps (each try coded once, `size_of` its file's bytes), with the
    search (None for a quality)."""
    target = rate.target(height, width)
    if target is None:
        return code(rate.gain_code(levels)), None
    coded: dict[int, Coded] = {}

    def size_at(gain_code: int) -> int:
        coded[gain_code] = code(gain_code)
        return size_of(coded[gain_code])

    search = search_gain_code(size_at, target, levels.code_range())
    return coded[search.gain_code], search


# Sizes grow about as gain ** 0.8 near the reference rate (embedded model,
# Kodak): the slope of the first step, before two tries give their own.
_FIRST_SLOPE = 0.8


def _next_try(sizes: dict[int, int], goal: float, below: int, above: int, low_code: int, high_code: int) -> int:
    """The next gain code to try, strictly between `below` and `above` and within the range."""
    nearest = sorted(sizes, key=lambda c: abs(math.log(sizes[c] / goal)))[:2]
    code0 = nearest[0]
    slope = _FIRST_SLOPE
    if len(nearest) == 2 and sizes[nearest[0]] != sizes[nearest[1]] and nearest[0] != nearest[1]:
        code1 = nearest[1]
        slope = math.log(sizes[code1] / sizes[code0]) / math.log(code1 / code0)
        if not 0.05 < slope < 5:  # noise between close codes: fall back to the usual slope
            slope = _FIRST_SLOPE
    guess = round(code0 * math.exp(math.log(goal / sizes[code0]) / slope))
    lo, hi = max(below, low_code - 1), min(above, high_code + 1)
    if lo < guess < hi:
        return guess
    if guess <= lo:
        return low_code if lo < low_code else (lo + hi) // 2 if hi - lo > 1 else lo
    return high_code if hi > high_code else (lo + hi + 1) // 2
