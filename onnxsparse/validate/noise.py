"""``validate --noise SIGMA``: both models on the same perturbed inputs, beside the clean numbers.

Pruning can keep clean accuracy and still make a model fragile.  Every float input gets Gaussian
noise of ``SIGMA`` times that input's standard deviation (over the whole data set), drawn from a
fixed seed so each provider, and each run, sees the same perturbation.  Reported per provider:
candidate vs reference on the perturbed inputs (fidelity), how far each model's own outputs move
from its clean outputs (``shift``: fidelity of perturbed vs clean), and the task metrics of both
on the perturbed inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from .metrics import FidelityAccumulator, OutputFidelity

__all__ = ["NoiseResult", "Perturbation", "NoiseRun", "check_sigma"]

#: mixed into the data seed so the noise stream differs from random data drawn with the same seed
_STREAM = 0x4E015E


def check_sigma(sigma: float | None) -> float | None:
    if sigma is not None and (not math.isfinite(sigma) or sigma <= 0):
        raise UsageError(f"--noise must be a finite number > 0 (a fraction of each input's std), got {sigma}")
    return sigma


@dataclass
class NoiseResult:
    """What one provider measured under noise (see the module docstring)."""

    sigma: float
    inputs: list[str]
    fidelity: list[OutputFidelity] = field(default_factory=list)
    reference_shift: list[OutputFidelity] = field(default_factory=list)
    candidate_shift: list[OutputFidelity] = field(default_factory=list)
    #: ``{"name", "output", "reference", "candidate", "drop", "higher_is_better"}`` on perturbed inputs
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Perturbation:
    """Adds ``sigma * std(input) * N(0, 1)`` to the float inputs of each batch, from a fixed seed."""

    def __init__(self, arrays: Mapping[str, np.ndarray], sigma: float, seed: int) -> None:
        self.sigma = sigma
        self.seed = seed
        self.stds = {name: float(np.std(arr, dtype=np.float64)) for name, arr in arrays.items()
                     if np.asarray(arr).dtype.kind == "f"}

    @property
    def inputs(self) -> list[str]:
        return [name for name, std in self.stds.items() if std > 0]

    def stream(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[tuple[dict[str, np.ndarray],
                                                                            dict[str, np.ndarray]]]:
        """(clean, perturbed) feeds for every batch; a new stream restarts the same noise."""
        rng = np.random.default_rng([self.seed, _STREAM])
        for feeds in batches:
            noisy = dict(feeds)
            for name, std in self.stds.items():
                if std > 0:
                    arr = feeds[name]
                    noisy[name] = (arr + self.sigma * std * rng.standard_normal(arr.shape)).astype(arr.dtype)
            yield feeds, noisy


class NoiseRun:
    """Accumulates the noisy outputs of both models beside their clean outputs, batch by batch."""

    def __init__(self, perturbation: Perturbation, pairs: Sequence[tuple[str, str]]) -> None:
        self.perturbation = perturbation
        self.fidelity = [FidelityAccumulator(r, c) for r, c in pairs]
        self.ref_shift = [FidelityAccumulator(r, r) for r, _ in pairs]
        self.cand_shift = [FidelityAccumulator(c, c) for _, c in pairs]
        self.label_outputs: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

    def update(self, ref_clean: Sequence[np.ndarray], cand_clean: Sequence[np.ndarray],
               ref_noisy: Sequence[np.ndarray], cand_noisy: Sequence[np.ndarray], label_index: int | None) -> None:
        for i in range(len(self.fidelity)):
            self.fidelity[i].update(ref_noisy[i], cand_noisy[i])
            self.ref_shift[i].update(ref_clean[i], ref_noisy[i])
            self.cand_shift[i].update(cand_clean[i], cand_noisy[i])
        if label_index is not None:
            self.label_outputs[0].append(np.asarray(ref_noisy[label_index]))
            self.label_outputs[1].append(np.asarray(cand_noisy[label_index]))

    def result(self, metrics: Sequence[Any], labels: np.ndarray | None, output: str) -> NoiseResult:
        out = NoiseResult(self.perturbation.sigma, self.perturbation.inputs,
                          [a.result() for a in self.fidelity], [a.result() for a in self.ref_shift],
                          [a.result() for a in self.cand_shift])
        if labels is not None and self.label_outputs[0]:
            ref_all, cand_all = np.concatenate(self.label_outputs[0]), np.concatenate(self.label_outputs[1])
            for metric in metrics:
                r, c = metric(ref_all, labels), metric(cand_all, labels)
                out.metrics.append({"name": metric.name, "output": output, "reference": r, "candidate": c,
                                    "drop": metric.drop(r, c), "higher_is_better": metric.higher_is_better})
        return out
