"""Measure onnxsparse on the generality corpus (``samples/corpus``, from ``samples/export_corpus.py``).

Run in the project venv (no torch needed)::

    python samples/corpus_table.py [NAME ...] [--out docs/corpus.md] [--json FILE]

For every corpus model (``<arch>_<attn>_<exporter>.onnx``):

* **prunable MACs**: % of the MACs of Conv/MatMul/Gemm nodes with a constant weight whose weight
  is a member of at least one prunable channel group (``build_groups``), at batch 1 and sequence
  7; the reasons of the groups holding the rest are listed (MatMuls of two activations -- the
  attention core -- are not in the denominator: they have no weight; ``--heads`` prunes them);
* **attention**: Softmax nodes, and the blocks ``prune_heads(heads=0.25, ffn=0.25)`` pruned
  (``heads_kept < heads_total``) or skipped (with the reason);
* **masked oracle, channels 0.3**: ``plan_pruning(dg, 0.3, round_to=1)``; the pruned model vs the
  original with the removed channels masked (``masked_copy``), at batch 3 / sequence 5 (the
  exports were traced at batch 2 / sequence 7); max |pruned - masked| / max |masked|;
* **masked oracle, heads 0.25 / FFN 0.25**: the removed heads' / neurons' output-projection rows
  zeroed in the original (as ``tests/test_heads.py``), same sizes and error;
* **no-op latency**: ``onnxsparse prune --channels 0`` output vs input, onnxruntime CPU, 1 thread,
  interleaved runs, median ratio;
* **time**: ``onnxsparse prune --channels 0.3`` (in-process CLI) and ``prune_heads``, wall time;
* **errors**: any exception or ``internal error`` skip reason, recorded, never raised.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import onnxsparse
from onnxsparse import load_model
from onnxsparse.analysis import model_stats
from onnxsparse.graph import apply_plan, build_groups, masked_copy
from onnxsparse.io import max_runtime_ir_version
from onnxsparse.passes.prune import plan_pruning, prepare_for_analysis
from onnxsparse.passes.prune_heads import masked_heads_model, prune_heads

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DOC = HERE.parent / "docs" / "corpus.md"
#: oracle sizes (the exports were traced at batch 2, sequence 7)
ORACLE_BATCH, ORACLE_SEQ = 3, 5
VOCAB_LOW, VOCAB_HIGH = 3, 128
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def corpus_models(corpus: Path = CORPUS) -> list[str]:
    return sorted(p.stem for p in corpus.glob("*.onnx"))


def to_bytes(model: ir.Model | onnx.ModelProto) -> bytes:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return proto.SerializeToString()


def session(model: Any) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not isinstance(model, (str, bytes)):
        model = to_bytes(model)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def feeds(sess: ort.InferenceSession, batch: int = ORACLE_BATCH, seq: int = ORACLE_SEQ, seed: int = 0) -> dict:
    """Inputs for ``sess``: symbolic ``batch``/``seq`` dims set; ids in range, one padded row."""
    rng = np.random.default_rng(seed)
    out = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (seq if str(d) == "seq" else batch) for d in arg.shape]
        if arg.name == "input_ids":
            out[arg.name] = rng.integers(VOCAB_LOW, VOCAB_HIGH, shape).astype(np.int64)
        elif arg.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[0, -2:] = 0
            out[arg.name] = mask
        else:
            out[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def rel_error(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    worst = 0.0
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return float("inf")
        scale = max(float(np.abs(e).max()), 1e-12) if e.size else 1.0
        worst = max(worst, float(np.abs(a.astype(np.float64) - e).max()) / scale if e.size else 0.0)
    return worst


def differs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(x.shape != y.shape or not np.allclose(x, y, rtol=1e-3, atol=1e-4) for x, y in zip(a, b))


def prepared(path: Path) -> ir.Model:
    """The model as ``prune()`` analyses it: normalised, attention rewritten."""
    return prepare_for_analysis(load_model(path))


def _short(reason: str) -> str:
    """A reason with node/value names replaced, so equal causes group together."""
    reason = re.sub(r"'[^']*'", "'…'", reason)
    reason = re.sub(r"\b(val|v)_\d+\b", "…", reason)
    return reason[:140]


# ----------------------------------------------------------------------------- measurements


def channel_coverage(path: Path) -> dict[str, Any]:
    """% of weighted Conv/MatMul/Gemm MACs whose weight is in a prunable group, reasons for the rest."""
    model = prepared(path)
    dims = {"batch": 1, "seq": 7}
    stats = model_stats(model, dims=dims, sparsity=False)
    macs_by_node = {row.name: row.macs or 0 for row in stats.node_rows}
    weights: dict[str, str] = {}
    for node in model.graph:
        if node.op_type in WEIGHT_OPS and node.domain in ("", "ai.onnx"):
            for index in (1, 0) if node.op_type != "Conv" else (1,):
                v = node.inputs[index] if len(node.inputs) > index else None
                if v is not None and v.const_value is not None:
                    weights[node.name] = v.name
                    break
    dg = build_groups(model)
    prunable_values = {m.slot.value for g in dg.prunable for m in g.members if m.weight}
    reasons_by_value: dict[str, list[str]] = {}
    internal = []
    for g in dg.skipped:
        for r in g.reasons:
            if "internal error" in r:
                internal.append(r)
        for m in g.members:
            if m.weight:
                reasons_by_value.setdefault(m.slot.value, []).extend(g.reasons)
    total = covered = 0
    rest: dict[str, int] = {}
    for node_name, value in weights.items():
        macs = macs_by_node.get(node_name, 0)
        total += macs
        if value in prunable_values:
            covered += macs
        else:
            reasons = reasons_by_value.get(value) or ["weight in no group"]
            key = _short(reasons[0])
            rest[key] = rest.get(key, 0) + macs
    return {"weighted_macs": total, "prunable_macs": covered,
            "prunable_pct": 100.0 * covered / total if total else 0.0,
            "groups": len(dg.groups), "prunable_groups": len(dg.prunable),
            "rest": dict(sorted(rest.items(), key=lambda kv: -kv[1])), "internal_errors": internal}


def channel_oracle(path: Path, ratio: float = 0.3) -> dict[str, Any]:
    model = prepared(path)
    dg = build_groups(model)
    internal = [r for g in dg.skipped for r in g.reasons if "internal error" in r]
    plan, _ = plan_pruning(dg, ratio, round_to=1)
    if not plan.removed:
        return {"oracle": None, "note": "no channel removed", "internal_errors": internal}
    original = to_bytes(model)
    masked = to_bytes(masked_copy(model, plan))
    apply_plan(plan)
    pruned = to_bytes(model)
    onnx.checker.check_model(pruned, full_check=True)
    s_masked, s_pruned, s_orig = session(masked), session(pruned), session(original)
    f = feeds(s_masked)
    expected = s_masked.run(None, f)
    err = rel_error(s_pruned.run(None, f), expected)
    return {"oracle": err, "vacuous": not differs(s_orig.run(None, f), expected),
            "removed_groups": len(plan.removed), "internal_errors": internal}




def heads_oracle(path: Path, heads: float = 0.25, ffn: float = 0.25) -> dict[str, Any]:
    model = load_model(path)
    start = time.perf_counter()
    report = prune_heads(model, heads=heads, ffn=ffn).report
    seconds = time.perf_counter() - start
    blocks = report["attention"]
    pruned_blocks = sum(1 for b in blocks if b["heads_kept"] < b["heads_total"])
    skipped = [f"{s.get('kind')}: {s.get('reason')}" for s in report["skipped"]]
    out: dict[str, Any] = {"attention_blocks": len(blocks), "heads_pruned_blocks": pruned_blocks,
                           "ffn_blocks": len(report["ffn"]),
                           "ffn_pruned_blocks": sum(1 for b in report["ffn"] if b["kept"] < b["total"]),
                           "skipped": skipped, "heads_seconds": seconds, "oracle": None}
    if not blocks and not report["ffn"]:
        return out
    reference = masked_heads_model(path, report)
    s_ref, s_new = session(reference), session(model)
    s_orig = session(str(path))
    f = feeds(s_ref)
    expected = s_ref.run(None, f)
    out["oracle"] = rel_error(s_new.run(None, f), expected)
    out["vacuous"] = not differs(s_orig.run(None, f), expected)
    return out


def cli(*argv: Any) -> tuple[int, str, str]:
    """``onnxsparse`` in-process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from onnxsparse.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _internal(data: Any) -> list[str]:
    """Every string mentioning an internal error anywhere in a JSON report."""
    found: list[str] = []
    if isinstance(data, dict):
        for v in data.values():
            found += _internal(v)
    elif isinstance(data, list):
        for v in data:
            found += _internal(v)
    elif isinstance(data, str) and "internal error" in data:
        found.append(data)
    return found


def noop_latency(path: Path, rounds: int = 15, runs: int = 20) -> dict[str, Any]:
    """``onnxsparse prune --channels 0``: the output vs the input, interleaved median latency ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "noop.onnx"
        code, stdout, err = cli("prune", path, "-o", out, "--channels", "0", "--json", "--force")
        if code != 0:
            raise RuntimeError(f"prune --channels 0 exited {code}: {err.strip()[:300]}")
        data = json.loads(stdout)
        a, b = onnx.load(str(path)), onnx.load(str(out))
        same_graph = [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
            [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
        s_in, s_out = session(str(path)), session(str(out))
    f = feeds(s_in, batch=1, seq=7)
    same = all(np.array_equal(x, y) for x, y in zip(s_in.run(None, f), s_out.run(None, f)))
    for s in (s_in, s_out):  # warm-up
        for _ in range(5):
            s.run(None, f)
    ratios = []
    for _ in range(rounds):
        times = []
        for s in (s_in, s_out):
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, f)
            times.append(time.perf_counter() - t0)
        ratios.append(times[1] / times[0])
    return {"noop_ratio": float(np.median(ratios)), "noop_unchanged": bool(data.get("unchanged")) and same_graph and same,
            "internal_errors": _internal(data)}


def prune_time(path: Path) -> dict[str, Any]:
    """``onnxsparse prune --channels 0.3`` (in-process CLI), wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        code, stdout, err = cli("prune", path, "-o", Path(tmp) / "p.onnx", "--channels", "0.3", "--json", "--force")
        seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"prune --channels 0.3 exited {code}: {err.strip()[:300]}")
    data = json.loads(stdout)
    return {"prune_seconds": seconds, "internal_errors": _internal(data)}


def measure(path: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": path.stem, "errors": []}
    for step in (channel_coverage, channel_oracle, heads_oracle, noop_latency, prune_time):
        try:
            out = step(path)
        except Exception as exc:  # noqa: BLE001 - record and go on
            row["errors"].append(f"{step.__name__}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            traceback.print_exc(file=sys.stderr)
            continue
        internal = out.pop("internal_errors", [])
        row["errors"].extend(f"{step.__name__}: {r[:300]}" for r in internal if f"{step.__name__}: {r[:300]}" not in row["errors"])
        if step is channel_oracle:
            out = {"channel_" + k: v for k, v in out.items()}
        if step is heads_oracle:
            out["heads_oracle"] = out.pop("oracle")
            if "vacuous" in out:
                out["heads_vacuous"] = out.pop("vacuous")
        row.update(out)
    return row


# ----------------------------------------------------------------------------- table


def _fmt_err(value: Any, vacuous: Any = False) -> str:
    if value is None:
        return "—"
    text = f"{value:.1e}"
    if value >= 1e-4:
        text = f"**{text} FAIL**"
    if vacuous:
        text += " (vacuous)"
    return text


def table(rows: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    lines = [
        "| model | exporter | MACs in prunable groups | Softmax | heads pruned | FFN pruned | oracle ch 0.3 | oracle heads/FFN 0.25 | no-op latency | prune time ch / heads | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["name"]
        exporter = "dynamo" if name.endswith("_dynamo") else "TorchScript"
        pct = f"{r['prunable_pct']:.1f}%" if "prunable_pct" in r else "—"
        soft = r.get("softmax", "—")
        heads = f"{r.get('heads_pruned_blocks', '—')}/{r.get('attention_blocks', '—')}"
        ffn = f"{r.get('ffn_pruned_blocks', '—')}/{r.get('ffn_blocks', '—')}"
        ch = _fmt_err(r.get("channel_oracle"), r.get("channel_vacuous"))
        if r.get("channel_note"):
            ch = r["channel_note"]
        hd = _fmt_err(r.get("heads_oracle"), r.get("heads_vacuous"))
        noop = f"{r['noop_ratio']:.2f}" + ("" if r.get("noop_unchanged") else " (output changed!)") if "noop_ratio" in r else "—"
        t = f"{r['prune_seconds']:.2f} s / {r['heads_seconds']:.2f} s" if "prune_seconds" in r and "heads_seconds" in r else "—"
        errs = "; ".join(e.replace("|", "\\|") for e in r["errors"]) or "none"
        lines.append(f"| {name.rsplit('_', 1)[0]} | {exporter} | {pct} | {soft} | {heads} | {ffn} | {ch} | {hd} | {noop} | {t} | {errs} |")
    return "\n".join(lines)


def not_exported(manifest: dict[str, Any]) -> str:
    lines = []
    for name, entry in sorted(manifest.get("models", {}).items()):
        if entry.get("status") != "ok":
            lines.append(f"* `{name}` ({entry.get('status')}): {entry.get('error', '')}")
    return "\n".join(lines) or "none"


def exported(manifest: dict[str, Any]) -> str:
    archs: dict[str, dict[str, list[str]]] = {}
    for name, entry in manifest.get("models", {}).items():
        if entry.get("source") not in ("transformers", "torchvision"):
            continue
        exp = "dynamo" if name.endswith("_dynamo") else "TorchScript"
        cell = archs.setdefault(entry["arch"], {})
        cell.setdefault(exp, []).append(entry["attn_implementation"] + ("" if entry["status"] == "ok" else " FAILED"))
    lines = ["| arch | model class | TorchScript | dynamo |", "|---|---|---|---|"]
    for arch, cell in archs.items():
        entry = next((e for e in manifest["models"].values() if e.get("arch") == arch and e.get("model_class")), {})
        cls = entry.get("model_class", "?") + (f" ({entry['reduced']})" if entry.get("reduced") else "")
        lines.append(f"| {arch} | {cls.replace('|', '/')} | {', '.join(cell.get('TorchScript', []))} | "
                     f"{', '.join(cell.get('dynamo', []))} |")
    return "\n".join(lines)


def reasons_section(rows: list[dict[str, Any]]) -> str:
    agg: dict[str, dict[str, Any]] = {}
    for r in rows:
        for reason, macs in r.get("rest", {}).items():
            a = agg.setdefault(reason, {"macs": 0, "models": []})
            a["macs"] += macs
            a["models"].append(r["name"])
    lines = ["| reason (first reason of a group holding the weight) | weighted MACs (sum over models) | models |", "|---|---|---|"]
    for reason, a in sorted(agg.items(), key=lambda kv: -kv[1]["macs"]):
        models = sorted({m.rsplit("_", 1)[0] for m in a["models"]})
        lines.append(f"| {reason.replace('|', '/')} | {a['macs']} | {len(a['models'])}: {', '.join(models)} |")
    return "\n".join(lines)


def heads_section(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        for s in r.get("skipped", []):
            lines.append(f"* `{r['name']}`: {s}")
    return "\n".join(sorted(set(lines))) or "none"


def _revision() -> str:
    """The repository's commit (and whether onnxsparse/ had uncommitted changes when measured)."""
    import subprocess

    root = HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "onnxsparse"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" with uncommitted changes in onnxsparse/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)
    names = opts.names or corpus_models(opts.corpus)
    manifest_path = opts.corpus / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    rows = []
    start = time.perf_counter()
    for name in names:
        path = opts.corpus / f"{name}.onnx"
        t0 = time.perf_counter()
        row = measure(path)
        row["softmax"] = sum(1 for n in onnx.load(str(path)).graph.node if n.op_type == "Softmax")
        rows.append(row)
        print(f"{name}: {time.perf_counter() - t0:.1f} s, errors: {row['errors'] or 'none'}", file=sys.stderr, flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    versions = manifest.get("versions", {})
    import onnxruntime

    revision = _revision()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Generality corpus

Tiny random-weight `transformers` models (2 layers, hidden 32, 4-8 heads, vocabulary 128, 32x32
images), each exported by PyTorch's TorchScript exporter (`dynamo=False`, opset 17) and its dynamo
exporter (opset 18) with dynamic batch (and sequence) axes: `samples/corpus/`, made by
`/work/torchenv/bin/python samples/export_corpus.py` (torch {versions.get('torch', '?')},
transformers {versions.get('transformers', '?')}); `samples/corpus/manifest.json` lists every
export, its config and any failure. Attention: SDPA everywhere it exists (DeBERTa-v2 and MobileViT
have only eager), eager as well for BERT, GPT-2, Llama and ViT. The decoders (Llama, Mistral, Qwen2,
Phi-3, Gemma) use grouped-query attention, 8 query / 4 KV heads. MobileViT keeps one transformer
layer per stage. The torchvision architectures (`tv_*`: ResNet-50, MobileNetV3, EfficientNet, RegNet, ConvNeXt,
DenseNet, ShuffleNet, SqueezeNet, GoogLeNet, VGG) are the torchvision classes with reduced widths
and depths (the Exports table says what was reduced), random BatchNorm statistics, 64x64 inputs
(VGG 224x224), made by `/work/tvenv/bin/python samples/export_torchvision.py` (torch
{manifest.get('versions_torchvision', {}).get('torch', '?')}, torchvision
{manifest.get('versions_torchvision', {}).get('torchvision', '?')}).

Measured on {now} ({platform.machine()}, 2 shared cores; onnxsparse {getattr(onnxsparse, '__version__', '?')} at {revision},
onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}) by

```bash
python samples/corpus_table.py          # project venv; rewrites this file
```

Columns:

* **MACs in prunable groups**: of the MACs of Conv/MatMul/Gemm nodes with a constant weight
  (batch 1, sequence 7), the share whose weight belongs to a prunable channel group
  (`build_groups` on the model as `prune()` analyses it: normalised, dynamo's batch-folded `K^T`
  unfolded). The attention core (MatMuls of two activations) has no weight and is not
  counted here; `--heads` prunes it. Reasons for the rest are in the next section.
* **Softmax** / **heads pruned** / **FFN pruned**: Softmax nodes (attention blocks), and the
  blocks in which `prune_heads(heads=0.25, ffn=0.25)` removed heads / FFN neurons, out of the
  blocks it recognised. MobileViT's blocks and Swin's first stage have 2 heads, where 0.25 rounds
  down to none (the block is recognised, nothing removed; `tests/test_corpus.py` uses 0.5 there and
  prunes every block). GQA decoders: 0.25 of 4 KV groups removes one group (2 query heads).
* **oracle ch 0.3**: `plan_pruning(dg, 0.3, round_to=1)` applied; max |pruned − masked| / max |masked|
  against the original with those channels masked (`masked_copy`), at batch {ORACLE_BATCH} /
  sequence {ORACLE_SEQ} (the exports were traced at batch 2 / sequence 7). Must be < 1e-4.
  "(vacuous)" would mean the masking changed nothing.
* **oracle heads/FFN 0.25**: the same for `--heads 0.25 --ffn 0.25`, the removed heads' and
  neurons' output-projection rows zeroed in the original (as `tests/test_heads.py`).
* **no-op latency**: `onnxsparse prune --channels 0` output / input, onnxruntime CPU, 1 thread,
  batch 1, median of 15 interleaved rounds of 20 runs; "(output changed!)" would mean the command
  did not write the input unchanged (same nodes, bit-identical outputs).
* **prune time**: wall time of `onnxsparse prune --channels 0.3` (in-process: load, normalise,
  groups, plan, apply, before/after measurement, save) and of `prune_heads(heads=0.25, ffn=0.25)`.
* **errors**: exceptions and `internal error` skip reasons; must be none.

## Exports

{exported(manifest)}

Not exported:

{not_exported(manifest)}

## Table

{table(rows, manifest)}

## Why the other weighted MACs are not in a prunable group

{reasons_section(rows)}

## Attention / FFN blocks `prune_heads` skipped

{heads_section(rows)}

## Failures and limits

No internal error, no oracle mismatch, no no-op change, no expected failure left in
`tests/test_corpus.py`. What does not work, or works with a limit:

* **Exporter**: the dynamo exporter (torch 2.13) fails on T5 and Swin with SDPA attention
  (`ConversionError ... Cannot view a tensor with shape ... as a tensor with shape ...` in the
  decomposition step); their eager variants export.
* **Heads shared across layers**: T5 computes its relative-position bias once and adds it to the
  scores of every layer, so head *h* of every layer reads the same bias column: the heads of all
  layers are one group (`heads pruned` 1/1 for 2 Softmax), pruned together, exactly.
* **Two heads per block** (MobileViT, Swin's first stage): `--heads 0.25` of 2 rounds down to none
  (reported with a note); 0.5 removes one (`tests/test_corpus.py`).
* **LayerNorm over the channel axis** (ConvNeXt, the transformers' residual stream): removing a
  channel changes every other channel's mean and variance, so those groups are skipped with that
  reason (not exact otherwise); heads and FFN neurons prune.
* **ShuffleNet TorchScript**: the channel-shuffle Reshape target is computed at run time with a
  `Div`, which blocks the shuffled trunk groups; the dynamo export (static targets) prunes them.
* Attention rewrites run first (`onnxsparse/passes/attention_rewrites.py`): dynamo's batch-folded
  `K^T`, packed QKV (GPT-2 Conv1D, Phi-3, GPT-NeoX, timm), DeBERTa-v2's heads folded into the batch
  around 3-D MatMuls, tf2onnx's Einsum lowering; each is exact and leaves other graphs alone.

Total measurement time: {time.perf_counter() - start:.0f} s. `tests/test_corpus.py` checks the
channel oracle and the no-op prune on these files.
"""
    opts.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
