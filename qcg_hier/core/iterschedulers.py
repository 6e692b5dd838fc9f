"""Per-iteration resource sizes: the `maximum-iters` and `split-into` schedulers.

Both see the TOTAL number of cores (or nodes) of the allocation, as upstream, and
give one exact size per iteration. Sizes are computed per index in O(1) (closed
forms of upstream's loops), so a job of 10^7 iterations never holds 10^7 sizes and
a retried iteration gets the same size again.

Fix over upstream: `split-into` honours `min` (upstream ignores it and may give an
iteration fewer cores than its minimum, or fail with "resolved to zero").
"""
from .errors import JobDescriptionError


def _share(amount: int, parts: int, k: int) -> int:
    """Share k of `amount` spread over `parts` as evenly as possible, larger shares last.

    Equals upstream's loop `share = left // (parts - k); left -= share` (Hermite's identity).
    """
    return (amount + k) // parts


class MaximumIters:
    """As many iterations at once as fit with at least `min` each, rest of the cores shared out."""

    def __init__(self, iterations: int, available: int, minimum: int | None):
        self.n, self.avail = iterations, available
        pmin = minimum or 1
        self.single_round = iterations * pmin <= available
        if not self.single_round:
            rounds = -(-iterations // (available // pmin))
            # rounds get ceil/floor of n/rounds iterations, the larger rounds first
            self.small, self.big_rounds = divmod(iterations, rounds)

    def distinct_sizes(self) -> set[int]:
        if self.single_round:
            return {self.avail // self.n, -(-self.avail // self.n)}
        sizes = {self.avail // (self.small + 1), -(-self.avail // (self.small + 1))}
        if self.small:
            sizes |= {self.avail // self.small, -(-self.avail // self.small)}
        return sizes

    def size(self, index: int) -> int:
        if self.single_round:
            return _share(self.avail, self.n, index)
        big = self.small + 1
        if index < self.big_rounds * big:
            return _share(self.avail, big, index % big)
        return _share(self.avail, self.small, (index - self.big_rounds * big) % self.small)


class SplitInto:
    """Every iteration gets total/parts, but never less than `min`."""

    def __init__(self, iterations: int, available: int, minimum: int | None, parts: int | None):
        self.value = max(available // (parts or iterations), minimum or 0)

    def distinct_sizes(self) -> set[int]:
        return {self.value}

    def size(self, index: int) -> int:
        return self.value


def make_sizer(name: str, params: tuple, iterations: int, available: int, minimum: int | None,
               job: str | None = None, field: str = "resources"):
    """The sizer of a job; checks up front what upstream would only fail on later."""
    if minimum is not None and minimum > available:
        raise JobDescriptionError(job, field, f"iteration scheduler minimum {minimum} exceeds the {available} available")
    if name == "split-into":
        parts = dict(params).get("parts")
        sizer = SplitInto(iterations, available, minimum, parts)
        if sizer.value <= 0:
            raise JobDescriptionError(job, f"{field}.scheduler",
                                      f"split-into resolved to zero ({available} over {parts or iterations} parts); give 'min'")
        return sizer
    return MaximumIters(iterations, available, minimum)
