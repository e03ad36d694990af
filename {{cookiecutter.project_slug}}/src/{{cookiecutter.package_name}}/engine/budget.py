"""Which members, with which TTA views, fit a code competition's time limit (`ensemble --budget`).

Each member offers one or more options (a set of views, its OOF predictions with them, its projected seconds from
estimate.json); a selection takes at most one option per member. Its score: the OOF score of the members' mean; its
cost: the sum of the options' seconds. `choose` returns the selection with the best score whose cost fits the budget
(the exact best among every selection while there are at most MAX_EXHAUSTIVE of them, so a larger budget never
scores lower; a greedy search beyond: add or swap the option that raises the score most while it fits).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.errors import UserError

MAX_EXHAUSTIVE = 4096


@dataclass(frozen=True)
class Option:
    member: str
    views: tuple[str, ...]
    seconds: float
    oof: np.ndarray  # (N, C) on the blend's OOF rows
    decided: bool  # the member's own views (its test_pred.csv); else it is predicted again with `views`


def _value(picked: list[Option], gain: Callable[[np.ndarray], float]) -> float:
    return gain(np.mean([o.oof for o in picked], axis=0))


def choose(options: dict[str, list[Option]], gain: Callable[[np.ndarray], float], budget_s: float
           ) -> tuple[list[Option], float]:  # fmt: skip
    """The selection (options in member order) and its gain; refuses when even the cheapest option does not fit."""
    cheapest = min((o for opts in options.values() for o in opts), key=lambda o: o.seconds)
    if cheapest.seconds > budget_s:
        raise UserError(f"--budget {budget_s / 60:g} min: even the cheapest member, {cheapest.member} with views "
                        f"{list(cheapest.views)}, takes {cheapest.seconds / 60:.2f} min: raise the budget or time it "
                        "on the competition's hardware")  # fmt: skip
    slots = [[None, *opts] for opts in options.values()]
    combos = int(np.prod([len(s) for s in slots]))
    if combos <= MAX_EXHAUSTIVE:
        best: tuple[float, float] | None = None
        picked: list[Option] = []
        for combo in itertools.product(*slots):
            chosen = [o for o in combo if o is not None]
            cost = sum(o.seconds for o in chosen)
            if not chosen or cost > budget_s:
                continue
            key = (_value(chosen, gain), -cost)  # the better score; at equal score, the faster
            if best is None or key > best:
                best, picked = key, chosen
        assert best is not None
        return picked, best[0]
    return _greedy(options, gain, budget_s)


def _greedy(options: dict[str, list[Option]], gain: Callable[[np.ndarray], float], budget_s: float
            ) -> tuple[list[Option], float]:  # fmt: skip
    order = list(options)
    chosen: dict[str, Option] = {}
    current = -np.inf
    while True:
        moves = []
        for member in order:
            for o in options[member]:
                trial = {**chosen, member: o}
                if trial.get(member) is chosen.get(member) or sum(x.seconds for x in trial.values()) > budget_s:
                    continue
                moves.append((_value(list(trial.values()), gain), trial))
        if not moves:
            break
        value, trial = max(moves, key=lambda m: m[0])
        if not value > current + 1e-12:
            break
        chosen, current = trial, value
    return [chosen[m] for m in order if m in chosen], float(current)
