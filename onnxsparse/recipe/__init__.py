"""Recipes: prune, sparsify, quantize and validate chained in one validated pipeline.

```python
from onnxsparse.recipe import load_recipe, run_recipe

recipe = load_recipe("recipes/cnn-edge.yaml", overrides=["prune.channels=0.2"])   # or "preset:cnn-edge", or a dict
result = run_recipe(recipe, "model.onnx", "small.onnx")
result.passed, result.steps[0].report, result.validation
```

The command is ``python -m onnxsparse run RECIPE MODEL -o OUT`` (see ``docs/recipes.md``).
"""

from __future__ import annotations

from .config import (
    DEFAULT_STEPS,
    STEP_TYPES,
    DensifyStep,
    PruneStep,
    QuantizeStep,
    Recipe,
    RecipeError,
    SparsifyStep,
    Step,
    ValidateStep,
    check_order,
    parse_recipe,
    register_step,
)
from .loader import load_recipe
from .overrides import apply_overrides
from .presets import DEFAULT_PRESETS, PRESETS, Preset, get_preset, preset_names, register_preset
from .runner import (
    EXECUTORS,
    SCHEMA,
    RecipeResult,
    RunContext,
    Stats,
    StepError,
    StepOutcome,
    StepResult,
    plan_recipe,
    prepare_run,
    register_executor,
    run_recipe,
)

__all__ = [
    "load_recipe",
    "run_recipe",
    "prepare_run",
    "plan_recipe",
    "parse_recipe",
    "apply_overrides",
    "check_order",
    "Recipe",
    "RecipeResult",
    "StepResult",
    "Stats",
    "Step",
    "PruneStep",
    "SparsifyStep",
    "QuantizeStep",
    "DensifyStep",
    "ValidateStep",
    "RecipeError",
    "StepError",
    "StepOutcome",
    "RunContext",
    "STEP_TYPES",
    "DEFAULT_STEPS",
    "register_step",
    "EXECUTORS",
    "register_executor",
    "PRESETS",
    "DEFAULT_PRESETS",
    "Preset",
    "get_preset",
    "preset_names",
    "register_preset",
    "SCHEMA",
]
