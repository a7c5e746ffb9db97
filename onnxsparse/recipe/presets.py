"""Named recipes that need no file: ``onnxsparse run preset:cnn-edge MODEL -o OUT``.

A preset is plain recipe data, validated by the same parser as a file into the same
dataclasses.  Presets name no data files, so gates that need data are left to the
user (``--set validate.data=test.npz --set validate.labels=labels.npy
--set validate.max_accuracy_drop=0.02``); static quantization needs
``--set calib=calib.npz``.  ``run --help`` lists the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..options.fields import did_you_mean
from .config import RecipeError

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESETS", "register_preset", "get_preset", "preset_names", "PREFIX"]

#: ``RECIPE`` arguments starting with this name a preset.
PREFIX = "preset:"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    #: what the user must or may add with ``--set``
    needs: str
    _data: Mapping[str, Any]

    def data(self) -> dict[str, Any]:
        """A fresh copy of the recipe data (callers may change it)."""
        return copy.deepcopy(dict(self._data))


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, data: Mapping[str, Any], needs: str = "") -> Preset:
    preset = Preset(name, description, needs, copy.deepcopy(dict(data, name=name, description=description)))
    PRESETS[name] = preset
    return preset


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise RecipeError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; presets: "
                          f"{', '.join(PRESETS)}") from None


register_preset(
    "cnn-edge",
    "CNN for a small CPU: 30% of channels (multiples of 8 for NCHWc kernels), static int8; "
    "gates: at most half the size, not slower",
    {"steps": [
        {"prune": {"channels": 0.3, "criterion": "l2", "round_to": 8}},
        {"quantize": {"mode": "static"}},
        {"validate": {"max_size_ratio": 0.5, "max_latency_ratio": 1.0}},
    ]},
    needs="--set calib=CALIB.npz (static quantization); add accuracy gates with validate.data/labels",
)

register_preset(
    "transformer-cpu",
    "transformer encoder on CPU: 25% of attention heads and FFN neurons, dynamic int8; "
    "gates: at most half the size, not slower, output cosine >= 0.9",
    {"steps": [
        {"prune": {"heads": 0.25, "ffn": 0.25}},
        {"quantize": {"mode": "dynamic"}},
        {"validate": {"max_size_ratio": 0.5, "max_latency_ratio": 1.0, "min_cosine": 0.9}},
    ]},
    needs="--set shape.INPUT=DIMS for dynamic sequence axes (random validation data), or validate.data",
)

register_preset(
    "smallest-file",
    "smallest download: 30% of channels, dynamic int8, then 80% of the int8 weights stored sparse "
    "(quantize before sparsify: quantizing would fold sparse storage back to dense); gate: a quarter of the size",
    {"steps": [
        {"prune": {"channels": 0.3}},
        {"quantize": {"mode": "dynamic"}},
        {"sparsify": {"sparsity": 0.8, "format": "auto"}},
        {"validate": {"max_size_ratio": 0.25}},
    ]},
    needs="accuracy gates with validate.data/labels: 80% unstructured sparsity without fine-tuning costs accuracy",
)

register_preset(
    "sparse-2of4",
    "2:4 sparsity chosen by SparseGPT (kept weights updated to compensate), stored sparse: the pattern "
    "sparse tensor cores run, in a smaller file; gate: at most 75% of the size",
    {"steps": [
        # delta, not auto: at 50% sparsity bitmask is ~6% smaller but its decode folds ~2x slower
        {"sparsify": {"pattern": "2:4", "criterion": "sparsegpt", "format": "delta"}},
        {"validate": {"max_size_ratio": 0.75}},
    ]},
    needs="--set calib=CALIB.npz (SparseGPT reads the layers' inputs); add accuracy gates with validate.data/labels",
)

#: The presets shipped with onnxsparse, in the order ``run --help`` lists them.
DEFAULT_PRESETS: tuple[str, ...] = ("cnn-edge", "transformer-cpu", "smallest-file", "sparse-2of4")
