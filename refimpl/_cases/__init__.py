"""Registry inputs: per family, the cases (tiny / small / bench), tolerances and reference
VJPs that :mod:`refimpl._ops` attaches to each op."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class Case:
    """One set of keyword arguments (NumPy float64 arrays, ints, Python scalars).

    ``kwargs`` is a dict, or a zero-argument callable building it (bench sizes are built only
    when a benchmark needs them). ``where`` restricts a case to "cpu" or "gpu" devices;
    ``dtypes`` (None = the op's) to some dtypes, e.g. a GPU size meant for bfloat16."""

    label: str
    kwargs: Union[dict, Callable[[], dict]]
    where: str = "any"
    dtypes: Union[tuple, None] = None

    def runs_in(self, dtype: str) -> bool:
        return self.dtypes is None or dtype in self.dtypes

    def inputs(self) -> dict:
        return self.kwargs() if callable(self.kwargs) else self.kwargs
