"""Importance criteria for ``prune`` and ``sparsify``: one interface, one registry.

A criterion scores per unit of a dependency group (``structured``, ``prune``:
:meth:`Criterion.score`), per element of a weight (``elementwise``,
``sparsify``: :meth:`Criterion.score_weight`), or both (``wanda``).  Default
criteria (in CLI order): ``l2``, ``l1``, ``magnitude``, ``bn``, ``random``
(data-free) and ``activation``, ``wanda``, ``flap``, ``sparsegpt`` (need
calibration statistics, see :mod:`.activation`); ``available_criteria(kind)``
lists those of one granularity.  A criterion that cannot score a group or weight
raises :class:`~onnxsparse.errors.Decline`.  Add one with::

    from onnxsparse.criteria import Criterion, register_criterion

    @register_criterion("mine")
    class Mine(Criterion):
        def score(self, group, ctx):                 # prune --criterion mine
            return sum(w.per_unit("abs") for w in ctx.weights(group))

        def score_weight(self, weight, ctx):         # sparsify --criterion mine
            return abs(weight)
"""

from . import magnitude, bn, random, activation, sparsegpt  # noqa: F401,I001 - registration order = CLI order (isort: skip)
from .base import (
    KINDS,
    Criterion,
    Kind,
    ScoringContext,
    WeightContext,
    available_criteria,
    get_criterion,
    register_criterion,
)
from .activation import DataCriterion, WandaCriterion
from .magnitude import MagnitudeCriterion
from .sparsegpt import SparseGPTCriterion
from ._data import CALIBRATION_KEY

#: The criteria shipped with onnxsparse, in the order the CLI lists them.
DEFAULT_CRITERIA: tuple[str, ...] = ("l2", "l1", "magnitude", "bn", "random", "activation", "wanda", "flap",
                                     "sparsegpt")

__all__ = [
    "Kind",
    "KINDS",
    "Criterion",
    "ScoringContext",
    "WeightContext",
    "register_criterion",
    "get_criterion",
    "available_criteria",
    "DEFAULT_CRITERIA",
    "DataCriterion",
    "MagnitudeCriterion",
    "WandaCriterion",
    "SparseGPTCriterion",
    "CALIBRATION_KEY",
]
