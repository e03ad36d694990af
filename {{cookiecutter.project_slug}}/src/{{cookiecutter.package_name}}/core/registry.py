"""Name -> object registries at every extension point (metrics, losses, optimizers, schedules, TTA views,
augmentation presets, samplers, blend methods), all filled the same way:

    @METRICS.register("accuracy", higher_is_better=True, tasks=("multiclass", "binary"))
    def _accuracy(...): ...

Keyword arguments are the entry's metadata ("higher is better", the tasks it takes, "rank only"...), read back
with `meta(name)` and used to filter `names(...)`. Config keys whose value names an entry take their allowed
values from the registry (config.CHOICES), so adding an entry is the only step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, Mapping[str, Any]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Callable[[T], T]:
        """Register `obj` under `name` (or, without `obj`, decorate the object to register)."""

        def deco(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            self._meta[name] = MappingProxyType(dict(meta))
            return item

        if obj is not None:
            deco(obj)
        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def meta(self, name: str) -> Mapping[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self, where: Callable[[Mapping[str, Any]], bool] | None = None) -> list[str]:
        """Sorted names, or those whose metadata passes `where`."""
        return sorted(n for n in self._items if where is None or where(self._meta[n]))

    def __contains__(self, name: object) -> bool:
        return name in self._items
