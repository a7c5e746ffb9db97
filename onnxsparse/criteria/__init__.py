"""Importance criteria for structured pruning, registered by name.

Default criteria (in CLI order): ``l2``, ``l1``, ``bn``, ``random`` (data-free)
and ``activation``, ``wanda``, ``flap`` (need calibration statistics, see
:mod:`.activation`).  Add one with::

    from onnxsparse.criteria import Criterion, register_criterion

    @register_criterion("mine")
    class Mine(Criterion):
        def score(self, group, ctx):
            return sum(w.per_unit("abs") for w in ctx.weights(group))
"""

from . import magnitude, bn, random, activation  # noqa: F401,I001 - registration order = CLI order (isort: skip)
from .base import Criterion, ScoringContext, available_criteria, get_criterion, register_criterion
from .activation import DataCriterion
from ._data import CALIBRATION_KEY

#: The criteria shipped with onnxsparse, in the order the CLI lists them.
DEFAULT_CRITERIA: tuple[str, ...] = ("l2", "l1", "bn", "random", "activation", "wanda", "flap")

__all__ = [
    "Criterion",
    "ScoringContext",
    "register_criterion",
    "get_criterion",
    "available_criteria",
    "DEFAULT_CRITERIA",
    "DataCriterion",
    "CALIBRATION_KEY",
]
