#!/usr/bin/env python
"""Train a small ResNet on a harder digits task and export it to ONNX.

The 8x8 digits CNN keeps 99% top-1, so pruning differences vanish there.  This sample is the kind
of CNN users have (stem, three stages of residual basic blocks 16-32-48 wide, stride-2
downsampling with a 1x1 projection shortcut, BatchNorm folded by the TorchScript exporter,
GlobalAveragePool + Gemm) on a task that is not saturated: scikit-learn's digits upsampled to
16x16, randomly shifted by up to 3 pixels and covered with Gaussian noise (std 0.5), in the
training, calibration and test images alike.

Needs ``torch`` (CPU) and ``scikit-learn``; reuses the helpers of ``train_digits.py``.  Writes:

* ``models/digits_resnet.onnx``               TorchScript exporter, opset 17, constant folding
* ``data/digits_resnet_test.npz`` (``input`` [3N,1,16,16]: each of the N test digits three times,
  own shifts and noise), ``data/digits_resnet_test_labels.npy``
* ``data/digits_resnet_calib.npz``            128 augmented training images
* ``data/digits_resnet_results.json``         accuracies measured with onnxruntime
* the results table in ``README.md`` (between the ``digits-resnet-results`` markers)

Everything is seeded: ``python samples/train_digits_resnet.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from train_digits import (DATA, MODELS, SEED, export_torchscript, io_desc, load_data, op_counts,
                          ort_accuracy, seed_everything, torch_accuracy, train, update_readme)

SIZE = 16        # upsampled image side
SHIFT = 3        # maximum random shift, pixels
NOISE = 0.5      # Gaussian noise std (images are in [0, 1])
COPIES = 6       # augmented copies of each training image
TEST_COPIES = 3  # augmented copies of each test image: 1080 test images, so a point is ~3 images
NAME = "digits_resnet"


def augment(x: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
    """[N,8,8] in [0,1] -> [N*copies,1,16,16]: bilinear upsampling, random shift, Gaussian noise."""
    up = F.interpolate(torch.from_numpy(x)[:, None], size=(SIZE, SIZE), mode="bilinear",
                       align_corners=False).numpy()
    up = np.repeat(up, copies, axis=0)
    pad = np.pad(up, ((0, 0), (0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
    shifts = rng.integers(0, 2 * SHIFT + 1, size=(len(up), 2))
    out = np.stack([pad[i, :, dy:dy + SIZE, dx:dx + SIZE] for i, (dy, dx) in enumerate(shifts)])
    out += rng.normal(0.0, NOISE, size=out.shape)
    return out.astype(np.float32)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 strided projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem 16 -> stages 16, 32 (stride 2), 48 (stride 2) -> global average pool -> Linear(10)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def augmented_data(save: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), seeded; ``save`` writes the test and
    calibration files (``data/digits_resnet_*``, which every network trained on this task reads)."""
    rng = np.random.default_rng(SEED)
    x_tr, x_te, y_tr, y_te = load_data()
    xa_tr, ya_tr = augment(x_tr, COPIES, rng), np.repeat(y_tr, COPIES)
    xa_te, ya_te = augment(x_te, TEST_COPIES, rng), np.repeat(y_te, TEST_COPIES)
    calib_idx = np.sort(rng.choice(len(x_tr), 128, replace=False))
    xa_calib = augment(x_tr[calib_idx], 1, rng)  # fresh shifts and noise, training digits
    if save:
        os.makedirs(DATA, exist_ok=True)
        np.savez_compressed(os.path.join(DATA, f"{NAME}_test.npz"), input=xa_te)
        np.save(os.path.join(DATA, f"{NAME}_test_labels.npy"), ya_te.astype(np.int64))
        np.savez_compressed(os.path.join(DATA, f"{NAME}_calib.npz"), input=xa_calib)
    print(f"train {len(xa_tr)} ({COPIES} x {len(x_tr)}), test {len(xa_te)}")
    return xa_tr, ya_tr, xa_te, ya_te


def main() -> int:
    t0 = time.time()
    torch.set_num_threads(1)  # bit-reproducible training
    xa_tr, ya_tr, xa_te, ya_te = augmented_data(save=True)

    seed_everything()
    net = DigitsResNet()
    train(net, xa_tr, ya_tr, epochs=12, lr=5e-3, batch=128)
    acc_t = torch_accuracy(net, xa_te, ya_te)
    path = os.path.join(MODELS, f"{NAME}.onnx")
    m = export_torchscript(net, (torch.from_numpy(xa_te[:2]),), path, ["input"], ["logits"],
                           {"input": {0: "batch"}, "logits": {0: "batch"}})
    acc = ort_accuracy(path, xa_te, ya_te)
    results: Dict[str, Dict] = {NAME: dict(torch_acc=acc_t, ort_acc=acc, ops=op_counts(m),
                                           size_bytes=os.path.getsize(path), **io_desc(m))}
    print(f"{NAME}: torch acc {acc_t:.4f}, onnxruntime acc {acc:.4f}, ops {op_counts(m)}, "
          f"{os.path.getsize(path) / 1024:.1f} KB")
    summary = dict(torch_version=torch.__version__, onnx_version=onnx.__version__,
                   onnxruntime_version=ort.__version__, n_test=int(len(ya_te)),
                   augmentation=dict(size=SIZE, shift=SHIFT, noise=NOISE, copies=COPIES,
                                     test_copies=TEST_COPIES),
                   models=results)
    with open(os.path.join(DATA, f"{NAME}_results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    update_readme(results, len(ya_te), marker="digits-resnet-results")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
