"""Validation as an onnx_ir pass: a step of a pass pipeline that looks at the model and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
from onnx_ir.passes import PassResult

from ..options.validate import ValidateOptions
from .result import ValidationResult

__all__ = ["ValidatePass", "ValidateResult"]


@dataclass
class ValidateResult(PassResult):
    """The pass result (the model, unmodified) with the :class:`ValidationResult` and its verdict."""

    validation: ValidationResult = field(kw_only=True)


class ValidatePass(ir.passes.InPlacePass):
    """Compare the model with ``reference`` (a path or model) under ``options``; never modifies it.

    The verdict is in ``result.validation.passed``: a failing gate is a finding, not an error, so a
    pipeline decides what to do with it (the recipe runner stops and writes nothing).
    """

    def __init__(self, reference: Any, options: ValidateOptions | None = None) -> None:
        super().__init__()
        self.reference = reference
        self.options = options or ValidateOptions()

    def call(self, model: ir.Model) -> ValidateResult:
        from . import validate

        result = validate(self.reference, model, progress=False, **self.options.validate_kwargs())
        return ValidateResult(model, False, validation=result)
