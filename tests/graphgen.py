"""Random valid float32 ONNX graphs from the op set onnxsparse prunes, as a hypothesis strategy.

:func:`graphs` draws a :class:`Spec` -- a CNN trunk of composable blocks (Conv with bias, groups
incl. depthwise, stride and padding; BatchNormalization; Relu/Sigmoid/HardSwish; residual Adds
with an identity or 1x1-projected shortcut; Concat of branches; Split into branches; per-channel
scales; MaxPool/AveragePool) and a head (GlobalAveragePool or Flatten into Gemm, or the feature map
reshaped and transposed into tokens for MLP and decomposed multi-head attention blocks) -- and
builds it with the
samples' :class:`GraphBuilder` (weights drawn from the spec's seed, as initializers or as
``Constant`` nodes the way Paddle exports them), optionally with an intermediate tensor as a
second graph output (whose channels must then stay).  Every model is checked with
``onnx.checker.check_model(full_check=True)``; its single input ``input`` has a symbolic
``batch`` dim.  Shapes stay small (<= 12 blocks, <= 16 channels) so one example runs in
milliseconds.  The blocks are drawn one by one (so hypothesis shrinks them one by one), the
spec is the example's ``repr`` and :func:`build` is deterministic.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from helpers import ROOT
from hypothesis import strategies as st

sys.path.insert(0, str(ROOT / "samples"))
# the samples' builder: one way to build graphs
from build_samples import GraphBuilder, fvi

__all__ = ["MAX_BLOCKS", "MAX_CHANNELS", "Block", "Graph", "Spec", "build", "graphs", "specs"]

MAX_CHANNELS = 16
MAX_BLOCKS = 12
ACTIVATIONS = ("Relu", "Sigmoid", "HardSwish", None)


@dataclass(frozen=True)
class Block:
    """One block: its kind and its drawn parameters (``(name, value)`` pairs, readable in a repr)."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, kind: str, **params: Any) -> Block:
        return cls(kind, tuple(params.items()))

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def __repr__(self) -> str:  # evaluable: a failing example can be rebuilt from hypothesis' report
        return f"Block.of({', '.join([repr(self.kind), *(f'{k}={v!r}' for k, v in self.params)])})"


@dataclass(frozen=True)
class Spec:
    """A whole graph: input channels and side, the stem width, the blocks and the weight seed."""

    in_channels: int
    side: int
    blocks: tuple[Block, ...]
    seed: int
    weights_as: str = "initializer"
    tap: int | None = None  #: the block whose output is also a graph output
    width: int = 1  #: every drawn channel count (not the input's, not the classes) times this


class Graph:
    """A drawn spec and its model; the repr (what hypothesis reports) is the spec: ``build(spec)``
    rebuilds the model."""

    __slots__ = ("proto", "spec")

    def __init__(self, spec: Spec, proto: onnx.ModelProto) -> None:
        self.spec, self.proto = spec, proto

    def __repr__(self) -> str:
        return f"Graph({self.spec!r})"


# ------------------------------------------------------------------ drawing


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _act(draw: st.DrawFn) -> str | None:
    return draw(st.sampled_from(ACTIVATIONS))


def _draw_conv(draw: st.DrawFn, cin: int, side: int, cmax: int) -> tuple[Block, int, int]:
    """Conv (+bias) (+BN) (+per-channel scale) (+activation): width, kernel, stride, padding, groups drawn."""
    k = draw(st.sampled_from([1, 3]))
    pad = draw(st.sampled_from(sorted({0, k // 2}))) if side >= k else k // 2
    stride = draw(st.sampled_from([1, 2])) if side >= 3 else 1
    cout = draw(st.integers(2, cmax))
    groups = [g for g in _divisors(cin) if cout % g == 0]
    group = draw(st.sampled_from(groups))
    if draw(st.booleans()) and cin > 1:  # depthwise (channel multiplier 1 or 2)
        cout, group = cin * draw(st.sampled_from([m for m in (1, 2) if cin * m <= cmax])), cin
    block = Block.of("conv", cout=cout, k=k, stride=stride, pad=pad, group=group, bias=draw(st.booleans()),
                     bn=draw(st.booleans()), scale=draw(st.booleans()), act=_act(draw))
    return block, cout, (side + 2 * pad - k) // stride + 1


def _draw_residual(draw: st.DrawFn, cin: int, side: int, cmax: int) -> tuple[Block, int, int]:
    """conv3x3-BN-act-conv3x3-BN + shortcut (identity, or a 1x1 conv (+BN) when the shape changes)."""
    stride = draw(st.sampled_from([1, 2])) if side >= 3 else 1
    cout = draw(st.sampled_from([cin, draw(st.integers(2, cmax))]))
    project = stride != 1 or cout != cin or draw(st.booleans())
    block = Block.of("residual", cout=cout, stride=stride, project=project, act=_act(draw), out_act=_act(draw))
    return block, cout, (side - 1) // stride + 1


def _draw_concat(draw: st.DrawFn, cin: int, side: int, cmax: int) -> tuple[Block, int, int]:
    """Branches (a conv each, or the input itself) joined by Concat on channels."""
    identity = draw(st.booleans()) and cin <= cmax - 2
    room = cmax - (cin if identity else 0)
    n = draw(st.integers(1 if identity else 2, min(3, room)))
    widths = tuple(draw(st.integers(1, room // n)) for _ in range(n))
    block = Block.of("concat", widths=widths, k=draw(st.sampled_from([1, 3])), identity=identity, act=_act(draw))
    return block, sum(widths) + (cin if identity else 0), side


def _draw_split(draw: st.DrawFn, cin: int, side: int, cmax: int) -> tuple[Block, int, int]:
    """Split channels into branches, a 1x1 conv or just an activation on each, Concat back."""
    n = draw(st.integers(2, min(3, cin)))
    cuts = sorted(draw(st.lists(st.integers(1, cin - 1), min_size=n - 1, max_size=n - 1, unique=True)))
    parts = tuple(b - a for a, b in zip([0, *cuts], [*cuts, cin]))
    convs = tuple(draw(st.booleans()) for _ in parts)
    widths: list[int] = []
    for i, (part, conv) in enumerate(zip(parts, convs)):  # the total stays <= cmax
        rest = sum(1 if c else p for p, c in zip(parts[i + 1:], convs[i + 1:]))
        widths.append(draw(st.integers(1, cmax - sum(widths) - rest)) if conv else part)
    block = Block.of("split", parts=parts, convs=convs, widths=tuple(widths), act=_act(draw))
    return block, sum(widths), side


def _draw_pool(draw: st.DrawFn, cin: int, side: int, cmax: int) -> tuple[Block, int, int]:
    return Block.of("pool", op=draw(st.sampled_from(["MaxPool", "AveragePool"]))), cin, side // 2


_CONV_BLOCKS = {"conv": _draw_conv, "residual": _draw_residual, "concat": _draw_concat, "split": _draw_split,
                "pool": _draw_pool}


def _draw_attention(draw: st.DrawFn, cmax: int) -> Block:
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, max(1, cmax // heads)))
    return Block.of("attention", heads=heads, head_dim=head_dim, residual=draw(st.booleans()),
                    merge=draw(st.sampled_from(["explicit", "infer"])),
                    keys=draw(st.sampled_from(["direct", "transposed"])))


def _draw_mlp(draw: st.DrawFn, cmax: int) -> Block:
    return Block.of("mlp", hidden=draw(st.integers(2, cmax)), act=_act(draw), residual=draw(st.booleans()))


@st.composite
def specs(draw: st.DrawFn, max_blocks: int = MAX_BLOCKS, attention: bool = False, cmax: int = MAX_CHANNELS,
          width: int = 1) -> Spec:
    """A random :class:`Spec` (at most ``cmax`` channels anywhere, times ``width``); ``attention=True``:
    always token blocks, at least one of them attention."""
    in_channels = draw(st.integers(1, 4))
    side = input_side = draw(st.sampled_from([4, 5, 6, 8]))
    stem = Block.of("conv", cout=draw(st.integers(4, cmax)), k=3, stride=1, pad=1, group=1,
                    bias=draw(st.booleans()), bn=draw(st.booleans()), act=_act(draw))
    blocks = [stem]
    channels = stem.get("cout")
    head = "tokens" if attention else draw(st.sampled_from(["gap", "flatten", "tokens"]))
    n_tokens = draw(st.integers(1, 3)) if head == "tokens" else 0
    n_trunk = draw(st.integers(0, max_blocks - 3 - n_tokens))  # + stem, head, output: <= max_blocks
    for _ in range(n_trunk):
        kinds = [k for k in _CONV_BLOCKS if (k != "pool" or side >= 2) and (k != "split" or channels >= 2)]
        block, channels, side = _CONV_BLOCKS[draw(st.sampled_from(kinds))](draw, channels, side, cmax)
        blocks.append(block)
    if head == "tokens":
        blocks.append(Block.of("tokens", shape=draw(st.sampled_from(["explicit", "infer"]))))
        drawn = [draw(st.sampled_from(["attention", "mlp"])) for _ in range(n_tokens)]
        if attention and "attention" not in drawn:
            drawn[0] = "attention"
        blocks.extend(_draw_attention(draw, cmax) if k == "attention" else _draw_mlp(draw, cmax) for k in drawn)
    elif head == "flatten":
        blocks.append(Block.of("flatten", hidden=draw(st.integers(2, cmax)), act=_act(draw),
                               trans_b=draw(st.booleans())))
    else:
        blocks.append(Block.of("gap"))
    blocks.append(Block.of("out", classes=draw(st.integers(2, 5))))
    weights_as = draw(st.sampled_from(["initializer", "constant"]))
    # an intermediate block's output as a second graph output (its channels must then stay)
    tap = draw(st.one_of(st.none(), st.integers(0, len(blocks) - 2)))
    return Spec(in_channels, input_side, tuple(blocks), draw(st.integers(0, 2**31 - 1)), weights_as, tap, width)


@st.composite
def graphs(draw: st.DrawFn, max_blocks: int = MAX_BLOCKS, attention: bool = False,
           cmax: int = MAX_CHANNELS, width: int = 1) -> Graph:
    """A random valid model (see the module docstring) with the spec it was built from."""
    spec = draw(specs(max_blocks, attention, cmax, width))
    return Graph(spec, build(spec))


# ------------------------------------------------------------------ building


class _Builder:
    """Turns blocks into nodes; tracks the current tensor, its channels and its spatial side."""

    def __init__(self, spec: Spec) -> None:
        self.g = GraphBuilder(seed=spec.seed, weights_as=spec.weights_as)
        self.x, self.c, self.side = "input", spec.in_channels, spec.side
        self.tokens = False

    def act(self, x: str, kind: str | None) -> str:
        return x if kind is None else self.g.op(kind, [x])

    def linear(self, x: str, fin: int, fout: int, name: str) -> str:
        """``MatMul(x, W) + b``: how exporters write ``nn.Linear`` on a 3-D input."""
        g = self.g
        w = g.weight(f"{name}.weight", g.xavier((fin, fout), fin))
        b = g.weight(f"{name}.bias", g.small((fout,), 0.1))
        return g.op("Add", [g.op("MatMul", [x, w], name=f"{name}.MatMul"), b], name=f"{name}.Add")

    def shape(self, name: str, dims: list[int]) -> str:
        return self.g.const(f"{name}.shape", np.array(dims, np.int64))

    def add(self, block: Block, p: str, width: int = 1) -> None:
        if width > 1:  # a depthwise conv (group == input channels) stays depthwise
            scaled = {"cout", "widths", "parts", "hidden", "head_dim"} | (
                {"group"} if block.get("group", 1) > 1 and block.get("group") * width == self.c else set())
            block = Block(block.kind, tuple(
                (k, (tuple(x * width for x in v) if isinstance(v, tuple) else v * width) if k in scaled else v)
                for k, v in block.params))
        getattr(self, f"_{block.kind}")(block, p)

    def _conv(self, b: Block, p: str) -> None:
        g, cout = self.g, b.get("cout")
        y = g.conv(self.x, self.c, cout, b.get("k"), stride=b.get("stride"), pad=b.get("pad"), group=b.get("group"),
                   bias=b.get("bias"), name=f"{p}.conv")
        if b.get("bn"):
            y = g.bn(y, cout, name=f"{p}.bn")
        if b.get("scale"):
            scale = g.weight(f"{p}.scale", g.rng.uniform(0.5, 1.5, (cout, 1, 1)).astype(np.float32))
            y = g.op("Mul", [y, scale], name=f"{p}.scale")
        self.x, self.c = self.act(y, b.get("act")), cout
        self.side = (self.side + 2 * b.get("pad") - b.get("k")) // b.get("stride") + 1

    def _residual(self, b: Block, p: str) -> None:
        g, cout, stride = self.g, b.get("cout"), b.get("stride")
        y = g.conv(self.x, self.c, cout, 3, stride=stride, name=f"{p}.conv1")
        y = self.act(g.bn(y, cout, name=f"{p}.bn1"), b.get("act"))
        y = g.bn(g.conv(y, cout, cout, 3, name=f"{p}.conv2"), cout, name=f"{p}.bn2")
        shortcut = self.x
        if b.get("project"):
            shortcut = g.bn(g.conv(self.x, self.c, cout, 1, stride=stride, pad=0, name=f"{p}.proj"), cout,
                            name=f"{p}.proj_bn")
        self.x = self.act(g.op("Add", [y, shortcut], name=f"{p}.add"), b.get("out_act"))
        self.c, self.side = cout, (self.side - 1) // stride + 1

    def _concat(self, b: Block, p: str) -> None:
        branches = [self.x] if b.get("identity") else []
        for i, width in enumerate(b.get("widths")):
            y = self.g.conv(self.x, self.c, width, b.get("k"), bias=True, name=f"{p}.branch{i}")
            branches.append(self.act(y, b.get("act")))
        self.x = self.g.op("Concat", branches, name=f"{p}.concat", axis=1)
        self.c = sum(b.get("widths")) + (self.c if b.get("identity") else 0)

    def _split(self, b: Block, p: str) -> None:
        g, parts = self.g, b.get("parts")
        split = g.const(f"{p}.sizes", np.array(parts, np.int64))
        outs = g.op("Split", [self.x, split], name=f"{p}.split", n_out=len(parts), axis=1)
        joined = []
        for i, (part, conv, width) in enumerate(zip(outs, b.get("convs"), b.get("widths"))):
            y = g.conv(part, parts[i], width, 1, pad=0, name=f"{p}.branch{i}") if conv else part
            joined.append(self.act(y, b.get("act")))
        self.x = g.op("Concat", joined, name=f"{p}.concat", axis=1)
        self.c = sum(b.get("widths"))

    def _pool(self, b: Block, p: str) -> None:
        self.x = self.g.op(b.get("op"), [self.x], name=p, kernel_shape=[2, 2], strides=[2, 2])
        self.side //= 2

    def _tokens(self, b: Block, p: str) -> None:
        """``[N, C, H, W] -> Reshape [N, C, H*W] -> Transpose [N, H*W, C]``."""
        dims = [0, self.c, -1] if b.get("shape") == "explicit" else [0, 0, -1]
        r = self.g.op("Reshape", [self.x, self.shape(p, dims)], name=f"{p}.reshape")
        self.x = self.g.op("Transpose", [r], name=f"{p}.transpose", perm=[0, 2, 1])
        self.tokens = True

    def _attention(self, b: Block, p: str) -> None:
        """Decomposed multi-head self-attention on ``[N, T, D]`` tokens, output projection back to ``D``."""
        g, heads, head_dim = self.g, b.get("heads"), b.get("head_dim")
        width = heads * head_dim

        def split_heads(t: str, perm: list[int], name: str) -> str:
            r = g.op("Reshape", [t, self.shape(name, [0, 0, heads, head_dim])], name=f"{name}.reshape")
            return g.op("Transpose", [r], name=f"{name}.transpose", perm=perm)

        q = split_heads(self.linear(self.x, self.c, width, f"{p}.q"), [0, 2, 1, 3], f"{p}.q_heads")
        if b.get("keys") == "direct":
            k = split_heads(self.linear(self.x, self.c, width, f"{p}.k"), [0, 2, 3, 1], f"{p}.k_heads")
        else:  # [N, H, T, d], then transposed for the scores (how torch writes k.transpose(-2, -1))
            k = split_heads(self.linear(self.x, self.c, width, f"{p}.k"), [0, 2, 1, 3], f"{p}.k_heads")
            k = g.op("Transpose", [k], name=f"{p}.k_t", perm=[0, 1, 3, 2])
        v = split_heads(self.linear(self.x, self.c, width, f"{p}.v"), [0, 2, 1, 3], f"{p}.v_heads")
        scale = g.const(f"{p}.scale", np.array(1.0 / math.sqrt(head_dim), np.float32), np.float32)
        scores = g.op("Mul", [g.op("MatMul", [q, k], name=f"{p}.scores"), scale], name=f"{p}.scaled")
        probs = g.op("Softmax", [scores], name=f"{p}.softmax", axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], name=f"{p}.context")], name=f"{p}.merge",
                   perm=[0, 2, 1, 3])
        dims = [0, 0, width] if b.get("merge") == "explicit" else [0, 0, -1]
        ctx = g.op("Reshape", [ctx, self.shape(f"{p}.merge", dims)], name=f"{p}.merge.reshape")
        out = self.linear(ctx, width, self.c, f"{p}.o")
        self.x = g.op("Add", [out, self.x], name=f"{p}.residual") if b.get("residual") else out

    def _mlp(self, b: Block, p: str) -> None:
        h = self.act(self.linear(self.x, self.c, b.get("hidden"), f"{p}.fc1"), b.get("act"))
        out = self.linear(h, b.get("hidden"), self.c, f"{p}.fc2")
        self.x = self.g.op("Add", [out, self.x], name=f"{p}.residual") if b.get("residual") else out

    def _flatten(self, b: Block, p: str) -> None:
        features = self.c * self.side * self.side
        f = self.g.op("Flatten", [self.x], name=f"{p}.flatten", axis=1)
        if b.get("trans_b"):
            y = self.g.gemm(f, features, b.get("hidden"), name=f"{p}.fc")
        else:
            w = self.g.weight(f"{p}.fc.weight", self.g.xavier((features, b.get("hidden")), features))
            y = self.g.op("Gemm", [f, w], name=f"{p}.fc")
        self.x = self.act(y, b.get("act"))
        self.c = b.get("hidden")

    def _gap(self, b: Block, p: str) -> None:
        pooled = self.g.op("GlobalAveragePool", [self.x], name=f"{p}.pool")
        self.x = self.g.op("Flatten", [pooled], name=f"{p}.flatten", axis=1)

    def _out(self, b: Block, p: str) -> None:
        classes = b.get("classes")
        if self.tokens:
            self.linear(self.x, self.c, classes, p)
        else:
            self.g.gemm(self.x, self.c, classes, name=p)
        self.g.nodes[-1].output[0] = "output"
        self.x, self.c = "output", classes


def build(spec: Spec) -> onnx.ModelProto:
    """The model of ``spec`` (opset 17, IR 8), checked with ``onnx.checker`` (full check)."""
    b = _Builder(spec)
    tapped = None
    for i, block in enumerate(spec.blocks):
        b.add(block, f"b{i}.{block.kind}", spec.width)
        if i == spec.tap:
            tapped = b.x
    out_dims = ["batch", b.side * b.side if b.tokens else None, b.c]
    outputs = [fvi("output", [d for d in out_dims if d is not None])]
    model = b.g.model("graphgen", [fvi("input", ["batch", spec.in_channels, spec.side, spec.side])],
                      outputs, doc=repr(spec))
    if tapped is not None and tapped != "input":
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        model.graph.output.append(next(v for v in inferred.graph.value_info if v.name == tapped))
    onnx.checker.check_model(model, full_check=True)
    return model
