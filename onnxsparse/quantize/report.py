"""The quantization report: what was done, with which kernels, and what it cost.

One dataclass, rendered three ways: a short table for the terminal, a dict for
``--json``, and a file for ``--report`` (via :func:`onnxsparse.report.write_report`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..report import format_table, human_bytes, human_count

__all__ = ["QuantizeReport", "format_summary"]


@dataclass
class QuantizeReport:
    """Everything one ``quantize`` run did, and why."""

    model: str | None
    output: str | None
    mode: str
    settings: dict[str, Any]
    cpu: dict[str, Any]
    kernels: str = ""
    bytes_before: int = 0
    bytes_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    quantized: list[dict] = field(default_factory=list)
    quantized_by_op: dict[str, int] = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    zeros: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    node_errors: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_ratio(self) -> float | None:
        """Bytes after / bytes before (lower is smaller)."""
        if not self.bytes_after or not self.bytes_before:
            return None
        return self.bytes_after / self.bytes_before

    @property
    def zeros_exact(self) -> bool:
        return bool(self.zeros.get("exact", False))

    @property
    def passed(self) -> bool:
        """The promise held: every quantized weight was checked and every pruned zero is still zero."""
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes_ratio"] = self.bytes_ratio
        data["passed"] = self.passed
        return data


def _weights_line(settings: dict[str, Any]) -> str:
    parts = [str(settings.get("weight_type"))]
    parts.append("symmetric" if settings.get("weight_symmetric") else "asymmetric")
    if settings.get("per_channel") is not None:
        parts.append("per-channel" if settings.get("per_channel") else "per-tensor")
    if settings.get("block_size"):
        parts.append(f"blocks of {settings['block_size']}")
    return ", ".join(parts)


def _activations_line(report: QuantizeReport) -> str:
    act = str(report.settings.get("activation_type"))
    cal = report.calibration
    if cal:
        return f"{act} (calibrated: {cal['method']} on {cal['samples']} samples of {cal['data']})"
    return act


def _params_line(report: QuantizeReport) -> str:
    before, after = report.params_before, report.params_after
    if before is None or after is None:
        return "-"
    if before == after:
        return f"{human_count(before)} (unchanged)"
    return f"{human_count(before)} -> {human_count(after)} (pre-processing folded constants, e.g. BatchNorm)"


def _check_line(check: dict[str, Any] | None) -> str:
    if not check:
        return "-"
    if check.get("skipped"):
        return f"skipped: {check['skipped']}"
    parts = []
    if check.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {100 * check['top1_agreement']:.1f}%")
    parts.append(f"rel. L2 error {check['rel_l2_error']:.3g}")
    parts.append(f"max |diff| {check['max_abs_diff']:.3g}")
    return f"{', '.join(parts)} on {check['samples']} samples ({check['data']}, {check['provider']})"


def format_summary(report: QuantizeReport, max_rows: int = 15) -> str:
    """The terminal summary: key facts, then excluded nodes (capped)."""
    s = report.settings
    ratio = report.bytes_ratio
    size = human_bytes(report.bytes_before) + " -> " + human_bytes(report.bytes_after)
    if ratio:
        size += f" ({1 / ratio:.2f}x smaller)"
    by_op = ", ".join(f"{op} {n}" for op, n in report.quantized_by_op.items()) or "none"
    z = report.zeros
    if z.get("weights_checked") and not z.get("zeros_before"):
        zeros = f"no exact zeros in the {z['weights_checked']} quantized weights (nothing to keep)"
    elif z.get("weights_checked"):
        zeros = f"{z['zeros_kept']}/{z['zeros_before']} exact zeros kept in {z['weights_checked']} weights"
        zeros += "" if z.get("exact") else "  <-- NOT EXACT"
    elif not z.get("unmatched"):
        zeros = "no quantized weights to check"
    else:
        zeros = "nothing checked"
    if z.get("unmatched"):
        zeros += f"  <-- {len(z['unmatched'])} quantized weight(s) NOT VERIFIED"
    reduce_range = s.get("reduce_range")
    rr = "n/a" if reduce_range is None else ("on" if reduce_range else "off")
    rr_reason = s.get("reasons", {}).get("reduce_range", "")
    rr = f"{rr} ({rr_reason})" if rr_reason and not rr_reason.startswith("n/a") else rr
    rows = [
        ("model", report.model or "<in memory>"),
        ("output", report.output or "<not saved>"),
        ("mode", f"{report.mode} ({s.get('format')})"),
        ("bytes", size),
        ("params", _params_line(report)),
        ("weights", _weights_line(s)),
        ("activations", _activations_line(report)),
        ("reduce_range", rr),
        ("cpu", report.cpu.get("description", "")),
        ("kernels", report.kernels),
        ("quantized nodes", f"{len(report.quantized)} ({by_op})"),
        ("excluded nodes", str(len(report.excluded))),
        ("zeros", zeros),
        ("check on this CPU", _check_line(report.check)),
    ]
    out = [format_table(["item", "value"], rows, title=f"onnxsparse quantize ({report.seconds:.1f} s)")]
    if report.excluded:
        shown = report.excluded[:max_rows]
        table: list[tuple[Any, ...]] = [(r["node"], r["op_type"], r["reason"]) for r in shown]
        title = "excluded nodes" + (
            f" (first {max_rows} of {len(report.excluded)}; --report FILE lists all)"
            if len(report.excluded) > max_rows else ""
        )
        out.append("")
        out.append(format_table(["node", "op", "reason"], table, title=title))
    if report.node_errors:
        worst = report.node_errors[:5]
        table = [(r["node"], r["op_type"], f"{r['input_rel_error']:.4f}", f"{r['output_rel_error']:.4f}",
                  f"{r['added_rel_error']:.4f}") for r in worst]
        out.append("")
        out.append(format_table(
            ["node", "op", "input err", "output err", "added"], table,
            title=f"error per quantized node (worst {len(worst)} of {len(report.node_errors)}; "
                  "relative L2 vs fp32; --max-node-error E keeps costly nodes float)",
        ))
    for warning in report.warnings:
        out.append(f"warning: {warning}")
    for failure in report.failures:
        out.append(f"FAILED: {failure}")
    return "\n".join(out)
