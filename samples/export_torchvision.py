"""Export the torchvision architectures of the generality corpus: tiny random-weight CNNs, both PyTorch exporters.

Run with a Python that has torch + torchvision + onnx + onnxscript + onnxruntime (not needed by
onnxsparse itself; torchvision does not import beside the torch of ``/work/torchenv``)::

    python3 -m venv /work/tvenv
    /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx onnxscript onnxruntime numpy
    /work/tvenv/bin/python samples/export_torchvision.py [ARCH ...] [--out DIR]

Every architecture is the torchvision class itself (ResNet with ``Bottleneck``, MobileNetV3,
EfficientNet, RegNet, ConvNeXt, DenseNet, ShuffleNetV2, SqueezeNet with ``Fire``, GoogLeNet with
``Inception``, VGG) with its widths and depths reduced so that a file stays under
``export_corpus.MAX_BYTES`` -- through the constructor's own arguments where it has them, otherwise
by building the same block classes with divided channel counts -- keeping its structure (bottleneck
and identity residuals, squeeze-excitation, grouped and depthwise convolutions, channel split and
shuffle, dense concatenation, inception branches, fire modules).  ``num_classes=10``, random weights
(``torch.manual_seed(0)`` before construction; BatchNorm statistics and affine parameters are then
drawn at random too, as a trained network has them, instead of the identity 1/0/0/1), input
3x64x64 (VGG: 224x224, see :data:`ARCHS`).  Each is exported by ``torch.onnx.export(...,
dynamo=False)`` (opset 17, suffix ``ts``) and ``dynamo=True`` (opset 18, suffix ``dynamo``) with a
dynamic batch axis into ``corpus/tv_<arch>_none_<exporter>.onnx``, checked against torch with
onnxruntime, size- and IR-capped exactly as ``samples/export_corpus.py`` does (its helpers are
imported), and merged into ``corpus/manifest.json``: the transformers entries are kept, each record
has export_corpus's fields plus ``torchvision`` (its version) and ``reduced`` (what was made smaller
than the named torchvision model).  A failure is recorded with its error; the run never stops on one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export_corpus as ec  # noqa: E402  (numpy only at import time)

OUT = ec.OUT
SEED = ec.SEED
BATCH = ec.BATCH
NUM_CLASSES = 10
IMAGE = 64


def _tv(name: str):
    # torchvision.models re-exports builder functions named like some submodules (googlenet, ...)
    return importlib.import_module(f"torchvision.models.{name}")


#: recorded in every manifest entry (the reduced model's own initialisation is otherwise torchvision's)
BN_INIT = ("BatchNorm2d after construction: weight ~ U(0.5, 1.5), bias ~ 0.2 N(0, 1), running_mean ~ 0.2 N(0, 1), "
           "running_var ~ U(0.5, 1.5) (generator seed 2)")


def _randomize_batchnorm(model) -> None:
    """BatchNorm as after training (scale, shift, running statistics all != 1/0), so that folding and
    pruning it is exercised: a removed channel's BN shift is a constant that must be accounted for."""
    import torch

    g = torch.Generator().manual_seed(SEED + 2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


# --- builders: return (model, model_class, config, reduced) -------------------------------------------


def _resnet50():
    resnet = _tv("resnet")
    k, layers = 16, [2, 2, 2, 1]

    class SlimResNet(resnet.ResNet):
        """torchvision's ResNet whose stem and stage widths (64, 64/128/256/512 planes) are divided by k:
        ResNet.__init__ hard-codes them; everything else (Bottleneck, downsample, init) is ResNet's."""

        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if self.inplanes == 64 and planes == 64:  # the first stage: the stem's width
                self.inplanes = 64 // k
            return super()._make_layer(block, planes // k, blocks, stride, dilate)

    import torch.nn as nn

    model = SlimResNet(resnet.Bottleneck, layers, num_classes=NUM_CLASSES)
    # the stem and the classifier, built by ResNet.__init__ at the full width, at the reduced one
    model.conv1 = nn.Conv2d(3, 64 // k, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.bn1 = nn.BatchNorm2d(64 // k)
    model.fc = nn.Linear(512 // k * resnet.Bottleneck.expansion, NUM_CLASSES)
    config = {"block": "Bottleneck", "layers": layers, "stem_width": 64 // k,
              "planes": [64 // k, 128 // k, 256 // k, 512 // k], "num_classes": NUM_CLASSES}
    reduced = (f"ResNet-50 = ResNet(Bottleneck, [3, 4, 6, 3]): layers [3, 4, 6, 3] -> {layers}; stem width 64 -> "
               f"{64 // k} and stage planes 64/128/256/512 -> {'/'.join(str(p // k) for p in (64, 128, 256, 512))} "
               f"(outputs x4 as in Bottleneck), by a ResNet subclass whose _make_layer divides planes by {k} "
               "(ResNet has no width argument); conv1, bn1, fc rebuilt at that width")
    return model, "ResNet", config, reduced


def _mobilenet_v3_small():
    mn = _tv("mobilenetv3")
    width, last = 0.125, 64
    setting, default_last = mn._mobilenet_v3_conf("mobilenet_v3_small", width_mult=width)
    model = mn.MobileNetV3(setting, last, num_classes=NUM_CLASSES)
    config = {"conf": "mobilenet_v3_small", "width_mult": width, "last_channel": last, "num_classes": NUM_CLASSES,
              "blocks": [[c.input_channels, c.kernel, c.expanded_channels, c.out_channels, c.use_se,
                          "HS" if c.use_hs else "RE", c.stride] for c in setting]}
    reduced = (f"width_mult 1.0 -> {width} (_mobilenet_v3_conf); classifier hidden width (last_channel) "
               f"{default_last} (1024 x width_mult) -> {last}")
    return model, "MobileNetV3", config, reduced


def _efficientnet_b0():
    ef = _tv("efficientnet")
    width, depth = 0.125, 0.25
    setting, last = ef._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
    model = ef.EfficientNet(setting, dropout=0.2, last_channel=last, num_classes=NUM_CLASSES)
    config = {"conf": "efficientnet_b0", "width_mult": width, "depth_mult": depth, "num_classes": NUM_CLASSES,
              "stages": [[c.expand_ratio, c.kernel, c.stride, c.input_channels, c.out_channels, c.num_layers]
                         for c in setting]}
    reduced = f"width_mult 1.0 -> {width}, depth_mult 1.0 -> {depth} (_efficientnet_conf)"
    return model, "EfficientNet", config, reduced


def _regnet_y_400mf():
    rg = _tv("regnet")
    depths, widths, groups, stem = [1, 1, 2, 1], [8, 16, 32, 64], [4, 4, 4, 4], 8
    params = rg.BlockParams(depths=depths, widths=widths, group_widths=groups,
                            bottleneck_multipliers=[1.0] * 4, strides=[2] * 4, se_ratio=0.25)
    model = rg.RegNet(params, num_classes=NUM_CLASSES, stem_width=stem)
    config = {"depths": depths, "widths": widths, "group_widths": groups, "bottleneck_multipliers": [1.0] * 4,
              "strides": [2] * 4, "se_ratio": 0.25, "stem_width": stem, "num_classes": NUM_CLASSES}
    reduced = ("RegNetY-400MF (BlockParams.from_init_params(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, "
               "se_ratio=0.25): depths [1, 3, 6, 6], widths [48, 104, 208, 440], stem 32) -> BlockParams(depths "
               f"{depths}, widths {widths}, group_widths {groups}, SE 0.25), stem_width {stem}")
    return model, "RegNet", config, reduced


def _convnext_tiny():
    cn = _tv("convnext")
    dims, depths = [6, 12, 24, 48], [1, 1, 1, 1]
    setting = [cn.CNBlockConfig(d, dims[i + 1] if i + 1 < len(dims) else None, n)
               for i, (d, n) in enumerate(zip(dims, depths))]
    model = cn.ConvNeXt(setting, stochastic_depth_prob=0.0, layer_scale=1.0, num_classes=NUM_CLASSES)
    config = {"dims": dims, "depths": depths, "layer_scale": 1.0, "stochastic_depth_prob": 0.0,
              "num_classes": NUM_CLASSES}
    reduced = (f"ConvNeXt-T (dims [96, 192, 384, 768], depths [3, 3, 9, 3]) -> CNBlockConfig dims {dims}, depths "
               f"{depths}; layer_scale 1e-6 -> 1.0 (at 1e-6 every block's contribution is invisible)")
    return model, "ConvNeXt", config, reduced


def _densenet121():
    dn = _tv("densenet")
    cfg = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=4)
    model = dn.DenseNet(**cfg, num_classes=NUM_CLASSES)
    config = dict(cfg, num_classes=NUM_CLASSES)
    reduced = ("DenseNet-121 (growth_rate 32, block_config (6, 12, 24, 16), num_init_features 64) -> "
               "growth_rate 8, block_config (2, 2, 2, 2), num_init_features 16")
    return model, "DenseNet", config, reduced


def _shufflenet_v2_x0_5():
    sn = _tv("shufflenetv2")
    repeats, channels = [2, 2, 2], [8, 16, 32, 64, 128]
    model = sn.ShuffleNetV2(stages_repeats=repeats, stages_out_channels=channels, num_classes=NUM_CLASSES)
    config = {"stages_repeats": repeats, "stages_out_channels": channels, "num_classes": NUM_CLASSES}
    reduced = (f"ShuffleNetV2 x0.5 (stages_repeats [4, 8, 4], stages_out_channels [24, 48, 96, 192, 1024]) -> "
               f"{repeats}, {channels} (2 units a stage: the stride-2 unit and one stride-1 unit with its channel "
               "split)")
    return model, "ShuffleNetV2", config, reduced


def _squeezenet1_0():
    import torch.nn as nn

    sq = _tv("squeezenet")
    k = 8
    model = sq.SqueezeNet(version="1_0", num_classes=NUM_CLASSES)
    layers = []
    for m in model.features:  # the same sequence, every width divided by k
        if isinstance(m, sq.Fire):
            layers.append(sq.Fire(m.inplanes // k, m.squeeze.out_channels // k, m.expand1x1.out_channels // k,
                                  m.expand3x3.out_channels // k))
        elif isinstance(m, nn.Conv2d):
            layers.append(nn.Conv2d(m.in_channels, m.out_channels // k, kernel_size=m.kernel_size, stride=m.stride))
        else:
            layers.append(m)
    model.features = nn.Sequential(*layers)
    old = model.classifier[1]
    final = nn.Conv2d(old.in_channels // k, NUM_CLASSES, kernel_size=1)
    model.classifier[1] = final
    for m in model.modules():  # SqueezeNet.__init__'s initialisation
        if isinstance(m, nn.Conv2d):
            if m is final:
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
    fires = [[f.inplanes, f.squeeze.out_channels, f.expand1x1.out_channels, f.expand3x3.out_channels]
             for f in model.features if isinstance(f, sq.Fire)]
    config = {"version": "1_0", "width_divisor": k, "stem_width": 96 // k, "fire": fires, "num_classes": NUM_CLASSES}
    reduced = (f"every channel count of SqueezeNet 1.0 divided by {k} (stem 96 -> {96 // k}, Fire(96, 16, 64, 64) -> "
               f"Fire{tuple(fires[0])}, ..., Fire(512, 64, 256, 256) -> Fire{tuple(fires[-1])}; SqueezeNet has no "
               "width argument: features rebuilt from the same Fire/Conv2d/MaxPool2d sequence, final conv "
               f"{old.in_channels // k} -> {NUM_CLASSES}), depth unchanged")
    return model, "SqueezeNet", config, reduced


def _googlenet():
    import torch.nn as nn

    gn = _tv("googlenet")
    k = 16

    def s(c: int) -> int:
        return max(1, c // k)

    def conv_block(cin: int, cout: int, **kw):
        return gn.BasicConv2d(cin if cin == 3 else s(cin), s(cout), **kw)

    def inception_block(*channels: int, **kw):
        return gn.Inception(*(s(c) for c in channels), **kw)

    model = gn.GoogLeNet(num_classes=NUM_CLASSES, aux_logits=False, transform_input=False, init_weights=True,
                         blocks=[conv_block, inception_block, gn.InceptionAux])
    model.fc = nn.Linear(1024 // k, NUM_CLASSES)
    nn.init.trunc_normal_(model.fc.weight, mean=0.0, std=0.01, a=-2, b=2)
    # GoogLeNet's init (weights ~ N(0, 0.01)) makes the activations vanish through 20 layers (outputs ~1e-20):
    # He-normal convolutions instead
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    inceptions = [[m.branch1.conv.in_channels, m.branch1.conv.out_channels, m.branch2[0].conv.out_channels,
                   m.branch2[1].conv.out_channels, m.branch3[0].conv.out_channels, m.branch3[1].conv.out_channels,
                   m.branch4[1].conv.out_channels] for m in model.modules() if isinstance(m, gn.Inception)]
    config = {"width_divisor": k, "aux_logits": False, "transform_input": False, "inception": inceptions,
              "num_classes": NUM_CLASSES}
    reduced = (f"every channel count divided by {k} (at least 1): GoogLeNet's `blocks` argument given BasicConv2d/"
               f"Inception factories that divide the widths GoogLeNet.__init__ passes (conv 64/64/192 -> "
               f"{s(64)}/{s(64)}/{s(192)}, Inception(192, 64, 96, 128, 16, 32, 32) -> Inception{tuple(inceptions[0])}, "
               f"..., fc 1024 -> {1024 // k}); aux_logits False (eval graphs have none); convolutions He-normal "
               "instead of N(0, 0.01); depth unchanged")
    return model, "GoogLeNet", config, reduced


def _vgg11():
    import torch.nn as nn

    vg = _tv("vgg")
    k, hidden = 16, 8
    cfg = [c if c == "M" else c // k for c in vg.cfgs["A"]]
    model = vg.VGG(vg.make_layers(cfg, batch_norm=False), num_classes=NUM_CLASSES, init_weights=True)
    width = cfg[-2]
    model.classifier = nn.Sequential(nn.Linear(width * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=0.5),
                                     nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=0.5),
                                     nn.Linear(hidden, NUM_CLASSES))
    for m in model.classifier:  # VGG.__init__'s initialisation
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    config = {"cfg": cfg, "batch_norm": False, "classifier_hidden": hidden, "num_classes": NUM_CLASSES}
    reduced = (f"VGG-11 (cfg 'A' 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M; classifier 25088 -> 4096 -> "
               f"4096) -> make_layers widths / {k} {cfg}; classifier {width * 49} -> {hidden} -> {hidden} (VGG "
               "hard-codes 512 x 7 x 7 -> 4096: rebuilt with the same Linear/ReLU/Dropout sequence); input 224x224 "
               "because the TorchScript exporter supports AdaptiveAvgPool2d((7, 7)) only when 7 divides the "
               "feature map (64x64 gives 2x2)")
    return model, "VGG", config, reduced


#: corpus arch -> (builder, input side)
ARCHS: dict[str, tuple[Callable[[], tuple[Any, str, dict, str]], int]] = {
    "tv_resnet50": (_resnet50, IMAGE),
    "tv_mobilenet_v3_small": (_mobilenet_v3_small, IMAGE),
    "tv_efficientnet_b0": (_efficientnet_b0, IMAGE),
    "tv_regnet_y_400mf": (_regnet_y_400mf, IMAGE),
    "tv_convnext_tiny": (_convnext_tiny, IMAGE),
    "tv_densenet121": (_densenet121, IMAGE),
    "tv_shufflenet_v2_x0_5": (_shufflenet_v2_x0_5, IMAGE),
    "tv_squeezenet1_0": (_squeezenet1_0, IMAGE),
    "tv_googlenet": (_googlenet, IMAGE),
    "tv_vgg11": (_vgg11, 224),
}


def build(arch: str):
    import torch

    builder, side = ARCHS[arch]
    torch.manual_seed(SEED)
    model, cls, config, reduced = builder()
    _randomize_batchnorm(model)
    model.eval()
    g = torch.Generator().manual_seed(SEED + 1)
    args = (torch.randn(BATCH, 3, side, side, generator=g),)
    spec = {"names": ["pixel_values"], "dynamic": {"pixel_values": {0: "batch"}}, "outputs": ["logits"]}
    return model, cls, config, reduced, args, spec


def main(argv: list[str] | None = None) -> int:
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=list(ARCHS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--exporters", default="ts,dynamo")
    opts = parser.parse_args(argv)
    unknown = set(opts.archs) - set(ARCHS)
    if unknown:
        parser.error(f"unknown architectures {sorted(unknown)}; known: {', '.join(ARCHS)}")
    opts.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    manifest_path = opts.out / ec.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.setdefault("models", {})
    # the placeholders export_corpus.py wrote while torchvision could not be installed
    for name in [n for n, e in manifest["models"].items() if e.get("status") == "needs torchvision"]:
        del manifest["models"][name]
    import onnx
    import onnxruntime
    import onnxscript

    manifest["versions_torchvision"] = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0]}
    exporters = [(e == "dynamo", e) for e in opts.exporters.split(",")]
    for arch in opts.archs:
        for dynamo, suffix in exporters:
            name = f"{arch}_none_{suffix}"
            path = opts.out / f"{name}.onnx"
            entry: dict[str, Any] = {"arch": arch, "source": "torchvision", "attn_implementation": "none",
                                     "exporter": f"torch.onnx.export(dynamo={dynamo})",
                                     "torch": torch.__version__, "torchvision": torchvision.__version__,
                                     "seed": SEED, "init": BN_INIT}
            start = time.perf_counter()
            try:
                model, cls, config, reduced, args, spec = build(arch)
                entry.update(config=config, reduced=reduced, model_class=cls, attn_used="none",
                             inputs={n: list(a.shape) for n, a in zip(spec["names"], args)},
                             dynamic_axes=spec["dynamic"],
                             parameters=sum(p.numel() for p in model.parameters()))
                ec._export(model, args, path, spec, dynamo=dynamo)
                entry.update(ec._finalize(path))
                with torch.no_grad():
                    ref = model(*args)
                entry["max_abs_err_vs_torch"] = ec._check(path, spec, args, ref)
                entry["output_peak"] = float(ref.abs().max())
                entry["status"] = "ok"
                print(f"ok    {name}: {entry['bytes']} bytes, {entry['parameters']} parameters "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - record and go on
                entry["status"] = "failed"
                entry["error"] = ec._message(exc)
                print(f"FAIL  {name}: {entry['error']}", flush=True)
                traceback.print_exc()
                path.unlink(missing_ok=True)
            entry["export_seconds"] = round(time.perf_counter() - start, 1)
            manifest["models"][name] = entry
            manifest["models"] = dict(sorted(manifest["models"].items()))
            manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    files = list(opts.out.glob("*.onnx"))
    print(f"corpus: {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
