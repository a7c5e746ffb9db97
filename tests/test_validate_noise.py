"""``validate --noise SIGMA``: both models on the same seeded, perturbed inputs, beside the clean numbers."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from helpers import cli, sample
from test_validate_support import DIGITS_X, DIGITS_Y, FAST, edited_digits

from onnxsparse.errors import UsageError
from onnxsparse.recipe import run_recipe
from onnxsparse.validate import validate

QUICK = dict(runs=3, warmup=1, memory=False, session_repeats=1, samples=120)
SIGMA = 0.5


def _noisy_top1(model, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Top-1 of ``model`` on the inputs perturbed as documented, written out independently."""
    rng = np.random.default_rng([seed, 0x4E015E])
    noisy = (x + SIGMA * float(np.std(x, dtype=np.float64)) * rng.standard_normal(x.shape)).astype(x.dtype)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": noisy})[0].argmax(-1) == y).mean())


@pytest.fixture(scope="module")
def weaker(tmp_path_factory):
    return edited_digits(tmp_path_factory.mktemp("noise") / "weaker.onnx", noise=0.4, seed=1)


def test_noisy_accuracy_of_both_models_matches_an_independent_run(weaker) -> None:
    x, y = np.load(DIGITS_X)["input"][:120], np.load(DIGITS_Y)[:120]
    result = validate(sample("digits_cnn"), weaker, data=DIGITS_X, labels=DIGITS_Y, noise=SIGMA, seed=3, **QUICK)
    p = result.primary
    assert result.settings["noise"] == SIGMA and p.noise.inputs == ["input"]
    (clean,), (noisy,) = p.metrics, p.noise.metrics
    assert noisy["reference"] == pytest.approx(_noisy_top1(sample("digits_cnn"), x, y, 3), abs=1e-12)
    assert noisy["candidate"] == pytest.approx(_noisy_top1(weaker, x, y, 3), abs=1e-12)
    assert noisy["reference"] < clean.reference  # the noise is strong enough to cost accuracy
    assert noisy["drop"] == pytest.approx(noisy["reference"] - noisy["candidate"])
    (shift,) = p.noise.reference_shift
    assert 0 < shift.cosine < 1  # the reference's own outputs moved
    again = validate(sample("digits_cnn"), weaker, data=DIGITS_X, labels=DIGITS_Y, noise=SIGMA, seed=3, **QUICK)
    assert again.primary.noise.metrics == p.noise.metrics  # fixed seed: the same perturbation
    other = validate(sample("digits_cnn"), weaker, data=DIGITS_X, labels=DIGITS_Y, noise=SIGMA, seed=4, **QUICK)
    assert other.primary.noise.reference_shift[0].cosine != shift.cosine


def test_an_identical_candidate_stays_identical_under_noise() -> None:
    model = sample("digits_cnn")
    result = validate(model, model, data=DIGITS_X, noise=SIGMA, **QUICK)
    noise = result.primary.noise
    assert noise.fidelity[0].max_abs_error == 0.0 and noise.fidelity[0].top1_agreement == 1.0
    assert noise.reference_shift[0].cosine == noise.candidate_shift[0].cosine < 1
    assert validate(model, model, data=DIGITS_X, **QUICK).primary.noise is None


def test_cli_table_json_and_errors(tmp_path, weaker) -> None:
    code, text, err = cli("validate", sample("digits_cnn"), weaker, "--data", DIGITS_X, "--labels", DIGITS_Y,
                          "--noise", str(SIGMA), *FAST[:-1])
    assert code == 0, err
    assert f"Under noise (Gaussian, {SIGMA:g} x each input's std, seed 0" in text
    assert "Accuracy under noise" in text and "reference noisy" in text
    code, out, err = cli("validate", sample("digits_cnn"), weaker, "--noise", "0.1", *FAST[:-1], "--json")
    data = json.loads(out)
    assert data["settings"]["noise"] == 0.1 and data["providers"][0]["noise"]["fidelity"][0]["cosine"] is not None
    for bad in ("0", "-1", "nan"):
        code, _, err = cli("validate", sample("digits_cnn"), weaker, "--noise", bad, *FAST)
        assert code == 2 and "--noise must be a finite number > 0" in err
    with pytest.raises(UsageError):
        validate(sample("digits_cnn"), weaker, noise=0.0, **QUICK)


def test_recipe_validate_step_takes_noise(tmp_path, weaker) -> None:
    result = run_recipe({"steps": [{"prune": {"channels": 0.3}},
                                   {"validate": {"data": str(DIGITS_X), "noise": 0.2, "runs": 3, "warmup": 1,
                                                 "memory": False, "session_repeats": 1}}]}, weaker)
    assert result.steps[1].validation.primary.noise.sigma == 0.2
    from onnxsparse.recipe import RecipeError

    with pytest.raises(RecipeError, match="noise"):
        run_recipe({"steps": [{"prune": {"channels": 0.3}}, {"validate": {"noise": 0}}]}, weaker)
