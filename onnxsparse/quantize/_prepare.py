"""Get a model ready for ``onnxruntime.quantization``.

1. ``onnxsparse.normalize``: weights held in ``Constant`` nodes or foldable
   subgraphs become initializers (the quantizers only see initializers).
2. Every node gets a name (exclusion lists and the report refer to names).
3. ``value_info`` entries for initializers are dropped: onnxruntime's dynamic
   quantizer transposes Gemm weights in place and then fails shape inference
   against the stale entry.
4. ``quant_pre_process`` (symbolic shape inference, onnxruntime's basic graph
   optimisations such as Conv+BatchNorm folding, ONNX shape inference).  Symbolic
   inference fails on some exports; we then retry without it, and without the
   optimisations, and record what was skipped and why.  For external-data models
   the same steps run with the weights left on disk (:func:`pre_process_external`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort
import onnx_ir.passes.common as common

from .._workdir import working_dir as _working_dir
from ..io import inline_external_data
from ..limits import nbytes
from ..passes.normalize import normalize
from ._child import in_child
from ._ort import first_line, ort_quantization, quiet

__all__ = ["Prepared", "normalized_copy", "pre_processed", "pre_process", "pre_process_external", "strip_initializer_value_info",
           "save_proto"]

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The model file the quantizer reads, and how it was made."""

    path: Path
    steps: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    external_data: bool = False
    #: Node names before pre-processing (the names the user knows), in graph order.
    original_names: list[str] = field(default_factory=list)

    def load(self) -> onnx.ModelProto:
        return onnx.load(str(self.path), load_external_data=True)


def save_proto(proto: onnx.ModelProto, path: Path, external_data: bool) -> None:
    if external_data:
        onnx.save_model(
            proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
            location=path.name + ".data", size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(path))


def strip_initializer_value_info(proto: onnx.ModelProto) -> int:
    """Drop ``value_info`` entries that describe initializers; returns how many."""
    names = {init.name for init in proto.graph.initializer}
    keep = [vi for vi in proto.graph.value_info if vi.name not in names]
    dropped = len(proto.graph.value_info) - len(keep)
    if dropped:
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(keep)
    return dropped


def normalized_copy(model: ir.Model, tmp: Path, *, external_data: bool) -> Prepared:
    """Steps 1-3: ``tmp/normalized.onnx``, after which ``model`` is no longer needed (issue 16: drop it)."""
    source = tmp / "source.onnx"
    if external_data:
        ir.save(model, source, external_data=source.name + ".data")
    else:
        with inline_external_data(model):  # tensors from the user's data file, not a stale reference
            onnx.save_model(ir.to_proto(model), str(source))
    work = ir.load(source)
    steps: list[str] = []
    skipped: list[dict[str, str]] = []

    ir_before = work.ir_version  # normalize raises IR 3 to 4 itself: report the user's version
    normalize(work)
    steps.append("normalize (constants lifted to initializers, constant subgraphs folded)")
    if work.ir_version < 7:
        # IR < 4 requires initializers to be graph inputs; normalize removed them (they are weights).
        steps.append(f"IR version {ir_before} -> 7 (initializers are no longer graph inputs)")
        work.ir_version = 7
    unnamed = sum(1 for node in work.graph.all_nodes() if not node.name)
    if unnamed:
        common.NameFixPass()(work)
        steps.append(f"named {unnamed} unnamed node(s)")

    normalized = tmp / "normalized.onnx"
    proto = ir.to_proto(work)
    names = [node.name for node in proto.graph.node]
    strip_initializer_value_info(proto)
    save_proto(proto, normalized, external_data)
    del proto, work
    return Prepared(normalized, steps, skipped, external_data, names)


def pre_processed(prepared: Prepared, tmp: Path, *, preprocess: bool, half_weights: bool = False,
                  child: bool = False) -> Prepared:
    """Step 4 on :func:`normalized_copy`'s file; what was done or skipped is added to its lists.

    ``child``: run ``quant_pre_process`` in a child process (:mod:`._child`; issue 16, >2 GB models).

    ``half_weights``: the model has float16/bfloat16 weights; onnxruntime's CPU
    optimiser would wrap them in Casts to float32 (hiding them from the
    quantizer), so the optimisation step is skipped.
    """
    normalized, steps, skipped, external_data = prepared.path, prepared.steps, prepared.skipped, prepared.external_data
    if not preprocess:
        skipped.append({"step": "quant_pre_process", "reason": "disabled (--no-preprocess)"})
        return prepared
    pre = tmp / "preprocessed.onnx"
    attempts: tuple[tuple[str, dict[str, bool]], ...] = (
        ("symbolic shape inference + graph optimisation + ONNX shape inference", {}),
        ("graph optimisation + ONNX shape inference", {"skip_symbolic_shape": True}),
        ("ONNX shape inference", {"skip_symbolic_shape": True, "skip_optimization": True}),
    )
    if half_weights:
        skipped.append({"step": "quant_pre_process graph optimisation",
                        "reason": "float16 weights: onnxruntime's CPU optimiser would hide them behind Casts"})
        attempts = tuple((label, {**options, "skip_optimization": True}) for label, options in attempts
                         if "skip_optimization" not in options)
        attempts = tuple((label.replace("graph optimisation + ", ""), options) for label, options in attempts)
    done = False
    for label, options in attempts:
        try:
            if child:
                in_child(pre_process_external, normalized, pre, options, tmp=tmp)
            else:
                pre_process(normalized, pre, external_data, options)
        except Exception as exc:  # noqa: BLE001 - each failure is recorded, next attempt is smaller
            skipped.append({"step": f"quant_pre_process ({label})", "reason": first_line(exc)})
            logger.debug("quant_pre_process (%s) failed", label, exc_info=True)
            continue
        steps.append(f"quant_pre_process: {label}")
        done = True
        break
    return replace(prepared, path=pre) if done else prepared


def pre_process(source: Path, target: Path, external_data: bool, options: dict[str, bool]) -> None:
    """onnxruntime's ``quant_pre_process`` from ``source`` to ``target``, value_info of initializers dropped."""
    # Symbolic shape inference drops debug files into the working directory when it fails.
    with quiet(), _working_dir(target.parent):
        ort_quantization().quant_pre_process(str(source), str(target), save_as_external_data=external_data, **options)
    # The weights are loaded only when the file must be rewritten (issue 16: a whole model in memory).
    if strip_initializer_value_info(onnx.load(str(target), load_external_data=False)):
        proto = onnx.load(str(target), load_external_data=True)
        strip_initializer_value_info(proto)
        save_proto(proto, target, external_data)


#: tensors at most this large are read into memory for symbolic shape inference (shape-like values)
SMALL_TENSOR_BYTES = 64 * 2**10


def pre_process_external(source: Path, target: Path, options: dict[str, bool]) -> None:
    """``quant_pre_process``'s steps on a model whose weights stay on disk (issue 16: peak memory).

    The same steps, order and settings as :func:`pre_process` (read from onnxruntime's
    ``quant_pre_process``): symbolic shape inference, a basic-level optimisation session that writes
    the optimised model, ONNX shape inference, the pre-processing tag.  Symbolic inference needs the
    values of small (shape-like) tensors only, so the large ones stay references to ``source``'s
    files; the optimisation session reads them itself and writes its initializers to an external
    file.  onnxruntime's own function loads every weight and copies the model (3x its size).
    ``source`` and ``target`` share a folder: the written model refers to files there.
    """
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    folder = source.parent
    proto = onnx.load(str(source), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset <= 10:  # onnxruntime converts these first, on the whole model
        pre_process(source, target, True, options)
        return
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor) and nbytes(tensor.dims, onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)) <= SMALL_TENSOR_BYTES:
            load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    current = folder / "pre-symbolic.onnx"
    if not options.get("skip_symbolic_shape"):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with quiet(), _working_dir(folder):
            proto = SymbolicShapeInference.infer_shapes(proto, 2**31 - 1, False, False, 0)
    onnx.save_model(proto, str(current))
    del proto
    if not options.get("skip_optimization"):
        optimized = folder / "pre-optimized.onnx"
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(optimized)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            with quiet():
                ort.InferenceSession(str(current), so, providers=["CPUExecutionProvider"])
            current = optimized
        except Exception:  # noqa: BLE001 - onnxruntime goes on without the optimisation too
            logger.debug("optimisation session failed; continuing without it", exc_info=True)
    if not options.get("skip_onnx_shape"):
        onnx.shape_inference.infer_shapes_path(str(current), str(target))
    elif current != target:
        onnx.save_model(onnx.load(str(current), load_external_data=False), str(target))
    model = onnx.load(str(target), load_external_data=False)
    add_pre_process_metadata(model)
    strip_initializer_value_info(model)
    onnx.save_model(model, str(target))
