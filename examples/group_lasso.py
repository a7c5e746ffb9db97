"""Group-lasso regularisation over the groups ``onnxsparse prune`` removes.

Train with this penalty, and whole units (conv filters, FFN neurons, attention heads) go to zero
together with everything tied to them; ``onnxsparse prune --threshold 1e-8`` then removes exactly
those units.  The groups come from ``onnxsparse inspect model.onnx --groups groups.json``
(``docs/groups.md``)::

    groups = load_groups("groups.json")
    names = match_names(groups, dict(model.named_parameters()))   # ONNX name -> state-dict key
    loss = task_loss + torch_penalty(groups, dict(model.named_parameters()), lam=1e-4, names=names)

The penalty is ``lam * sum over units u of sqrt(|g|) * ||W_u||_2`` where ``W_u`` is every trained
weight unit ``u`` owns in its group (filter rows, the next layer's input columns, biases, norm
scale/shift; running statistics excluded) and ``|g|`` the number of those weights per unit.
The numpy functions (:func:`penalty`, :func:`prox`) need no torch; :func:`torch_penalty` imports it.
Run ``python examples/group_lasso.py groups.json weights.npz --lam 1e-4`` for the penalty of saved weights.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_groups", "match_names", "unit_norms", "penalty", "prox", "torch_penalty"]

FORMAT, VERSION = "onnxsparse-groups", 1


def load_groups(path: str | Path, *, prunable_only: bool = True) -> list[dict[str, Any]]:
    """The groups of an ``inspect --groups`` file (by default only those ``prune`` may remove)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path}: not an {FORMAT} version {VERSION} file")
    return [g for g in doc["groups"] if g["prunable"] or not prunable_only]


def match_names(groups: list[dict[str, Any]], state: Mapping[str, Any]) -> dict[str, str]:
    """ONNX initializer name -> state-dict key: the same name when present (TorchScript exports),
    else the next unused entry of the same shape in order (dynamo exports may rename weights)."""
    shape_of = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    used: set[str] = set()
    out: dict[str, str] = {}
    for member in (m for g in groups for m in g["members"] if m["trainable"]):
        name, shape = member["initializer"], tuple(member["shape"])
        if name in out:
            continue
        if name in state:
            out[name] = name
        else:
            key = next((k for k, s in shape_of.items() if s == shape and k not in used and k not in out.values()),
                       None)
            if key is None:
                raise KeyError(f"no state-dict entry named {name!r} or of shape {list(shape)}")
            out[name] = key
        used.add(out[name])
    return out


def _members(group: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in group["members"] if m["trainable"]]


def unit_norms(group: dict[str, Any], weights: Mapping[str, np.ndarray],
               names: Mapping[str, str] | None = None) -> np.ndarray:
    """``||W_u||_2`` of every unit of ``group`` (numpy)."""
    names = names or {}
    total = np.zeros(group["units"], dtype=np.float64)
    for m in _members(group):
        w = np.asarray(weights[names.get(m["initializer"], m["initializer"])], dtype=np.float64)
        per_position = np.square(np.moveaxis(w, m["axis"], 0)).reshape(w.shape[m["axis"]], -1).sum(axis=1)
        total += per_position[np.asarray(m["indices"], dtype=np.int64)].sum(axis=1)
    return np.sqrt(total)


def penalty(groups: list[dict[str, Any]], weights: Mapping[str, np.ndarray], lam: float,
            names: Mapping[str, str] | None = None) -> float:
    """``lam * sum_u sqrt(|g|) * ||W_u||_2`` over every unit of ``groups`` (numpy)."""
    return float(lam * sum(math.sqrt(g["weights_per_unit"]) * unit_norms(g, weights, names).sum() for g in groups))


def prox(groups: list[dict[str, Any]], weights: dict[str, np.ndarray], step: float, lam: float,
         names: Mapping[str, str] | None = None) -> None:
    """One proximal step of the penalty, in place: every unit's slice shrinks by ``step * lam * sqrt(|g|)``
    in norm, and a unit whose norm is below that becomes exactly zero (block soft-thresholding)."""
    names = names or {}
    for g in groups:
        norms = unit_norms(g, weights, names)
        cut = step * lam * math.sqrt(g["weights_per_unit"])
        scale = np.where(norms > cut, 1.0 - cut / np.where(norms > 0, norms, 1.0), 0.0)
        for m in _members(g):
            key = names.get(m["initializer"], m["initializer"])
            w = np.moveaxis(weights[key], m["axis"], 0)  # a view: writes land in weights[key]
            for unit, rows in enumerate(m["indices"]):
                w[rows] *= w.dtype.type(scale[unit])


def torch_penalty(groups: list[dict[str, Any]], params: Mapping[str, Any], lam: float,
                  names: Mapping[str, str] | None = None):
    """The penalty as a differentiable torch scalar (add it to the training loss)."""
    import torch

    names = names or {}
    total = None
    for g in groups:
        sq = None
        for m in _members(g):
            w = params[names.get(m["initializer"], m["initializer"])]
            per_position = w.movedim(m["axis"], 0).reshape(w.shape[m["axis"]], -1).pow(2).sum(dim=1)
            index = torch.as_tensor(m["indices"], dtype=torch.long, device=w.device)
            unit = per_position[index].sum(dim=1)
            sq = unit if sq is None else sq + unit
        if sq is None:
            continue
        term = math.sqrt(g["weights_per_unit"]) * torch.sqrt(sq + 1e-24).sum()  # eps: finite gradient at zero
        total = term if total is None else total + term
    return lam * (total if total is not None else torch.zeros(()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="group-lasso penalty of saved weights over onnxsparse's groups")
    parser.add_argument("groups", help="the JSON written by `onnxsparse inspect MODEL --groups FILE.json`")
    parser.add_argument("weights", help=".npz of the weights, keyed by ONNX initializer or state-dict name")
    parser.add_argument("--lam", type=float, default=1e-4, help="penalty strength (default 1e-4)")
    args = parser.parse_args(argv)
    groups = load_groups(args.groups)
    with np.load(args.weights) as npz:
        weights = {k: npz[k] for k in npz.files}
    names = match_names(groups, weights)
    dead = sum(int((unit_norms(g, weights, names) == 0).sum()) for g in groups)
    units = sum(g["units"] for g in groups)
    print(f"penalty {penalty(groups, weights, args.lam, names):.6g} over {len(groups)} groups "
          f"({units} units, {dead} exactly zero)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
