"""A function with its answers remembered, for hot paths that see the same few inputs again."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Remembered(Generic[K, V]):
    """`compute` with its answers kept in a plain dict, emptied once it holds `size` of them
    (inputs come from producers: memory stays bounded). Cheaper per call than lru_cache, and
    picklable when `compute` is, so objects holding one can go to worker processes."""

    def __init__(self, compute: Callable[[K], V], size: int) -> None:
        self.compute = compute
        self.size = size
        self.answers: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        try:
            return self.answers[key]
        except KeyError:
            if len(self.answers) >= self.size:
                self.answers.clear()
            found = self.answers[key] = self.compute(key)
            return found
