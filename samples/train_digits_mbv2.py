#!/usr/bin/env python
"""Train a small MobileNetV2-style CNN on the harder digits task and export it to ONNX.

Real CNNs are not uniform: MobileNetV2's inverted residual blocks keep narrow residual streams and do
most of their work in wide expansions (1x1 expand, 3x3 depthwise, 1x1 linear projection), which is
where one pruning ratio for every layer goes wrong.  Same task and data recipe as
``train_digits_resnet.py`` (digits upsampled to 16x16, shifted up to 3 pixels, Gaussian noise 0.5):
stem 3x3 conv 16 -> inverted residual blocks (expansion 6, ReLU6) 16, 16, 24 (stride 2), 24, 32
(stride 2), 32 -> 1x1 conv 128 -> global average pool -> Linear(10); BatchNorm folded by the
TorchScript exporter.

Needs ``torch`` (CPU) and ``scikit-learn``; reuses the helpers of ``train_digits.py`` and
``train_digits_resnet.py``.  Writes:

* ``models/digits_mbv2.onnx``               TorchScript exporter, opset 17, constant folding
* ``models/digits_mbv2_narrow.onnx``        the same at half width (stem 8; streams 8, 12, 16)
* nothing else: the networks train and are measured on ``digits_resnet``'s data (the same seeded images,
  ``data/digits_resnet_test.npz``, ``..._test_labels.npy``, ``..._calib.npz``)
* ``data/digits_mbv2_results.json``         accuracies measured with onnxruntime (both networks)
* the results table in ``README.md`` (between the ``digits-mbv2-results`` markers)

Everything is seeded: ``python samples/train_digits_mbv2.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from train_digits import (DATA, MODELS, export_torchscript, io_desc, op_counts,
                          ort_accuracy, seed_everything, torch_accuracy, train, update_readme)
from train_digits_resnet import COPIES, NOISE, SHIFT, SIZE, TEST_COPIES, augmented_data

NAME = "digits_mbv2"  # the results file's prefix
#: name -> (stem width, (output channels, stride) per inverted residual block); expansion 6 everywhere.
#: The narrow one is MobileNetV2 at half width: capacity-limited, as deployment-sized MobileNets are.
NETWORKS = {
    "digits_mbv2": (16, ((16, 1), (16, 1), (24, 2), (24, 1), (32, 2), (32, 1))),
    "digits_mbv2_narrow": (8, ((8, 1), (8, 1), (12, 2), (12, 1), (16, 2), (16, 1))),
}
EXPAND = 6


class InvertedResidual(nn.Module):
    """1x1 expand + ReLU6 -> 3x3 depthwise + ReLU6 -> 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = cin * EXPAND
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class DigitsMobileNetV2(nn.Module):
    def __init__(self, stem: int, block_specs: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        blocks, cin = [], stem
        for cout, stride in block_specs:
            blocks.append(InvertedResidual(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def main() -> int:
    t0 = time.time()
    torch.set_num_threads(1)  # bit-reproducible training
    xa_tr, ya_tr, xa_te, ya_te = augmented_data(save=False)  # digits_resnet's task and data files
    results: Dict[str, Dict] = {}
    for name, (stem, block_specs) in NETWORKS.items():
        seed_everything()
        net = DigitsMobileNetV2(stem, block_specs)
        train(net, xa_tr, ya_tr, epochs=12, lr=5e-3, batch=128)
        acc_t = torch_accuracy(net, xa_te, ya_te)
        path = os.path.join(MODELS, f"{name}.onnx")
        m = export_torchscript(net, (torch.from_numpy(xa_te[:2]),), path, ["input"], ["logits"],
                               {"input": {0: "batch"}, "logits": {0: "batch"}})
        acc = ort_accuracy(path, xa_te, ya_te)
        results[name] = dict(torch_acc=acc_t, ort_acc=acc, ops=op_counts(m), size_bytes=os.path.getsize(path),
                             **io_desc(m))
        print(f"{name}: torch acc {acc_t:.4f}, onnxruntime acc {acc:.4f}, ops {op_counts(m)}, "
              f"{os.path.getsize(path) / 1024:.1f} KB")
    summary = dict(torch_version=torch.__version__, onnx_version=onnx.__version__,
                   onnxruntime_version=ort.__version__, n_test=int(len(ya_te)),
                   augmentation=dict(size=SIZE, shift=SHIFT, noise=NOISE, copies=COPIES,
                                     test_copies=TEST_COPIES),
                   models=results)
    with open(os.path.join(DATA, f"{NAME}_results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    update_readme(results, len(ya_te), marker="digits-mbv2-results")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
