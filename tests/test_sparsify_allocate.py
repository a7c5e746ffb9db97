"""Per-tensor sparsity allocation (issue 13): the solvers, and ``sparsify --allocate`` on a trained model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import cli_json, sample, session

from onnxsparse.errors import UsageError
from onnxsparse.io import load_model
from onnxsparse.passes.sparsify import SparsifyConfig, sparsify
from onnxsparse.sparsity import allocate as A

CALIB = "samples/data/digits_calib.npz"


# ------------------------------------------------------------------ solvers


def test_match_average_is_exact_and_clipped():
    sizes = {"a": 100, "b": 300, "c": 600}
    out = A.match_average({"a": 0.9, "b": 0.5, "c": 0.1}, sizes, 0.6, cap=0.95)
    assert A.weighted_average(out, sizes) == pytest.approx(0.6, abs=1e-12)
    assert out["a"] == 0.95  # clipped at the cap, the others shifted further
    assert out["b"] - out["c"] == pytest.approx(0.4)
    with pytest.raises(UsageError):
        A.match_average({"a": 0.5}, {"a": 1}, 0.995)


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = np.ones(1000)
    scores[:3] = 100.0  # mean 1.297: 3 scores above 5x
    assert A.outlier_ratio(scores, 5.0) == pytest.approx(0.003)
    assert A.outlier_ratio(np.zeros(10)) == 0.0


def test_owl_gives_outlier_rich_tensors_less_sparsity():
    sizes = {"a": 1000, "b": 1000, "c": 2000}
    ratios = A.owl({"a": 0.001, "b": 0.010, "c": 0.004}, sizes, 0.7, lam=0.08)
    assert A.weighted_average(ratios, sizes) == pytest.approx(0.7, abs=1e-12)
    assert ratios["b"] < ratios["c"] < ratios["a"]
    assert ratios["a"] - ratios["b"] == pytest.approx(0.16)  # the span is 2 lambda
    same = A.owl({"a": 0.002, "b": 0.002}, {"a": 5, "b": 7}, 0.6)
    assert same == pytest.approx({"a": 0.6, "b": 0.6})


def test_lagrangian_matches_brute_force_on_convex_curves():
    """Three tensors with convex error curves: the solver's choice costs no more than the best
    grid combination with the same (or lower) weighted sparsity."""
    ladder = [0.1 * i for i in range(1, 10)]
    curves = {
        "flat": [(r, 0.1 * r ** 2) for r in ladder],
        "mid": [(r, 1.0 * r ** 2) for r in ladder],
        "steep": [(r, 10.0 * r ** 3) for r in ladder],
    }
    sizes = {"flat": 400, "mid": 400, "steep": 200}
    ratios = A.lagrangian(curves, sizes, 0.6)
    assert A.weighted_average(ratios, sizes) == pytest.approx(0.6, abs=1e-9)
    assert ratios["flat"] > ratios["mid"] > ratios["steep"]

    def cost(choice):
        return sum(np.interp(choice[n], [0, *ladder], [0, *(e for _, e in curves[n])]) for n in curves)

    grid = [0.05 * i for i in range(19)]  # up to 0.9, the last measured ratio
    best = min(cost(dict(zip(curves, c))) for c in np.array(np.meshgrid(grid, grid, grid)).T.reshape(-1, 3)
               if A.weighted_average(dict(zip(curves, c)), sizes) >= 0.6 - 1e-9)
    assert cost(ratios) <= best + 1e-3


# ------------------------------------------------------------------ the pass


def _pruned_zeros(model: ir.Model, report) -> tuple[float, dict[str, float]]:
    names = [r.name for r in report.tensors if r.pruned]
    arrays = {n: model.graph.initializers[n].const_value.numpy() for n in names}
    per = {n: float(np.count_nonzero(a == 0)) / a.size for n, a in arrays.items()}
    total = sum(np.count_nonzero(a == 0) for a in arrays.values()) / sum(a.size for a in arrays.values())
    return total, per


def _top1(model: ir.Model) -> float:
    data = dict(np.load("samples/data/digits_test.npz"))
    labels = np.load("samples/data/digits_test_labels.npy")
    sess = session(model)
    return float((sess.run(None, {i.name: data[i.name] for i in sess.get_inputs()})[0].argmax(-1) == labels).mean())


@pytest.mark.parametrize("allocate,calib", [("owl", None), ("owl", CALIB), ("sensitivity", CALIB)])
def test_the_target_is_the_parameter_weighted_average(allocate, calib):
    model = load_model(sample("digits_cnn"))
    report = sparsify(model, sparsity=0.7, allocate=allocate, calib=calib, format="dense", min_size=0)
    total, per = _pruned_zeros(model, report)
    sizes = sum(r.elements for r in report.tensors if r.pruned)
    assert abs(total - 0.7) <= len(per) / sizes  # one element of rounding per tensor
    assert max(per.values()) - min(per.values()) > 0.05  # not uniform
    assert any(f"allocation {allocate}:" in note for note in report.notes)
    assert report.config["allocate"] == allocate


def test_sensitivity_keeps_accuracy_uniform_loses():
    """digits_cnn, 70% of every linear weight by magnitude: uniform 0.19 top-1, sensitivity 0.86 (measured)."""
    scores = {}
    for allocate in ("uniform", "sensitivity"):
        model = load_model(sample("digits_cnn"))
        sparsify(model, sparsity=0.7, allocate=allocate, calib=CALIB, format="dense", min_size=0)
        scores[allocate] = _top1(model)
    assert scores["sensitivity"] >= 0.8 and scores["uniform"] <= 0.3, scores


def test_auto_is_sensitivity_with_data_and_uniform_without():
    pattern = SparsifyConfig().resolved()[0]
    assert SparsifyConfig(sparsity=0.5, calib=CALIB).allocation(pattern) == "sensitivity"
    assert SparsifyConfig(sparsity=0.5).allocation(pattern) == "uniform"
    assert SparsifyConfig(sparsity=0.5, calib=CALIB, global_scope=True).allocation(pattern) == "uniform"
    model = load_model(sample("digits_cnn"))
    report = sparsify(model, sparsity=0.6, format="dense", min_size=0)
    _, per = _pruned_zeros(model, report)
    assert all(abs(z - 0.6) < 0.01 for z in per.values())


@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=0.5, allocate="sensitivity"), "needs|give --calib"),
    (dict(pattern="2:4", allocate="owl"), "fixes every tensor"),
    (dict(sparsity=0.5, allocate="owl", global_scope=True), "--global"),
    (dict(allocate="owl"), "give --sparsity"),
    (dict(sparsity=0.5, allocate="best"), "must be one of"),
])
def test_allocation_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SparsifyConfig(**kwargs).resolved()


def test_ratio_globs_stay_pinned_outside_the_allocation():
    model = load_model(sample("digits_cnn"))
    report = sparsify(model, sparsity=0.6, allocate="owl", ratios={"classifier.weight": 0.2}, format="dense",
                      min_size=0)
    total, per = _pruned_zeros(model, report)
    assert per["classifier.weight"] == pytest.approx(0.2, abs=0.01)
    free = {r.name: r.elements for r in report.tensors if r.pruned and r.name != "classifier.weight"}
    average = sum(per[n] * size for n, size in free.items()) / sum(free.values())
    assert average == pytest.approx(0.6, abs=len(free) / sum(free.values()))


def test_cli_allocate(tmp_path):
    result = cli_json("sparsify", str(sample("digits_cnn")), "-o", str(tmp_path / "o.onnx"), "--sparsity", "0.7",
                      "--allocate", "owl", "--owl-lambda", "0.1", "--min-size", "0")
    targets = [t["target"] for t in result["tensors"] if t["pruned"]]
    assert max(targets) - min(targets) == pytest.approx(0.2, abs=1e-9)
    assert result["config"]["allocate"] == "owl"


def test_target_size_bounds_the_written_file(tmp_path):
    """digits_transformer, size=0.3: written 0.278x of the input (measured)."""
    source, fraction = sample("digits_transformer"), 0.3
    result = cli_json("sparsify", str(source), "-o", str(tmp_path / "o.onnx"), "--target", f"size={fraction}")
    written = (tmp_path / "o.onnx").stat().st_size
    assert result["file_bytes_after"] == written
    assert fraction - 0.06 <= written / source.stat().st_size <= fraction
    pruned = [t for t in result["tensors"] if t["pruned"]]
    zeros = sum(t["sparsity"] * t["elements"] for t in pruned) / sum(t["elements"] for t in pruned)
    assert zeros == pytest.approx(pruned[0]["target"], abs=1e-3)  # uniform: the chosen average everywhere


@pytest.mark.parametrize("kwargs,message", [
    (dict(target_size=0.3, sparsity=0.5), "drop --sparsity"),
    (dict(target_size=0.3, pattern="2:4"), "free sparsity"),
    (dict(target_size=0.0), "R > 0"),
])
def test_target_size_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SparsifyConfig(**kwargs).resolved()


def test_unreachable_target_size_says_how_small_it_gets():
    with pytest.raises(UsageError, match="even 0.99 sparsity gives"):
        sparsify(load_model(sample("digits_transformer")), target_size=0.01, min_size=0)


# ------------------------------------------------------------------ N:M


def test_knapsack_is_optimal_over_levels():
    rng = np.random.default_rng(0)
    levels = (0.0, 0.5, 0.75)
    names = [f"t{i}" for i in range(5)]
    sizes = {n: int(s) for n, s in zip(names, rng.integers(100, 1000, 5))}
    curves = {n: [(0.5, float(a)), (0.75, float(a + b))] for n, a, b in zip(names, rng.random(5), rng.random(5))}
    chosen = A.knapsack(curves, sizes, 0.45, levels)
    assert A.weighted_average(chosen, sizes) >= 0.45 - len(names) / 40000

    def cost(choice):
        return sum(dict([(0.0, 0.0), *curves[n]])[choice[n]] for n in names)

    combos = np.array(np.meshgrid(*[levels] * 5)).T.reshape(-1, 5)
    best = min(cost(dict(zip(names, c))) for c in combos if A.weighted_average(dict(zip(names, c)), sizes) >= 0.45)
    assert cost(chosen) == pytest.approx(best)


def test_nm_sensitivity_mixes_dense_and_sparser_nm_tensors():
    """digits_transformer, 2:4 at an average of 0.5, magnitude: uniform 0.942 top-1, sensitivity 0.972 (measured)."""
    from onnxsparse.sparsity import find_weights, nm_violations

    data = dict(np.load("samples/data/digits_test_tokens.npz"))
    labels = np.load("samples/data/digits_test_labels.npy")

    def top1(model):
        sess = session(model)
        out = sess.run(None, {i.name: data[i.name] for i in sess.get_inputs()})[0]
        return float((out.argmax(-1) == labels).mean())

    scores = {}
    for allocate, sparsity in (("uniform", None), ("sensitivity", 0.5)):
        model = load_model(sample("digits_transformer"))
        report = sparsify(model, pattern="2:4", sparsity=sparsity, allocate=allocate,
                          calib="samples/data/digits_calib_tokens.npz", format="dense", min_size=0)
        scores[allocate] = top1(model)
    infos = {info.name: info for info in find_weights(model)}
    pruned = [r for r in report.tensors if r.pruned]
    dense = [r for r in report.tensors if r.note and "left dense by --allocate" in r.note]
    assert dense and {r.target for r in pruned} <= {0.5, 0.75}
    for row in pruned + dense:  # every tensor still satisfies 2:4 (at most 2 of 4 kept) or is untouched
        array = model.graph.initializers[row.name].const_value.numpy()
        assert row in dense or nm_violations(array, 2, 4, infos[row.name].in_axis, np.float32(0)) == 0
    average = sum(r.sparsity * r.elements for r in pruned + dense) / sum(r.elements for r in pruned + dense)
    assert 0.5 - 1e-3 <= average <= 0.52
    assert scores["sensitivity"] >= scores["uniform"] + 0.02, scores


@pytest.mark.parametrize("kwargs,message", [
    (dict(pattern="2:4", sparsity=0.6, allocate="sensitivity", calib=CALIB), "must be in"),
    (dict(pattern="2:4", allocate="sensitivity", calib=CALIB), "needs --sparsity"),
    (dict(pattern="2:4", sparsity=0.4, allocate="uniform"), "drop --sparsity"),
])
def test_nm_allocation_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SparsifyConfig(**kwargs).resolved()
