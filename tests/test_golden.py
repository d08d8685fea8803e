"""Compatibility with the published PA-SAM checkpoint: outputs recorded from the authors' code."""

import subprocess
import sys

import torch

from pasam_plugins.golden import main, run_fixture


def test_public_golden_cases_match(golden_fixture):
    results = run_fixture(golden_fixture)
    assert len(results) >= 2
    for r in results:
        assert set(r.errors) >= {"masks", "iou_predictions", "uncertainty_map", "pa_mask"}
        assert r.max_error() <= 1e-4, (r.index, r.errors)


def test_golden_module_cli_prints_one_line_per_case(golden_fixture):
    proc = subprocess.run(
        [sys.executable, "-m", "pasam_plugins.golden", str(golden_fixture)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("case ")]
    assert len(lines) == len(torch.load(golden_fixture, weights_only=True)["cases"])
    assert all(" ok " in ln and "uncertainty_map=" in ln for ln in lines)


def test_golden_check_fails_on_a_wrong_implementation(golden_fixture, tmp_path, capsys):
    """The check must be able to fail: perturb one adapter weight of the recorded decoder."""
    data = torch.load(golden_fixture, weights_only=True)
    sd = data["official_decoder_state_dict"]
    sd["prompt_adapter.refined_mlp.layers.2.bias"] = (
        sd["prompt_adapter.refined_mlp.layers.2.bias"] + 0.05
    )
    bad = tmp_path / "perturbed.pt"
    torch.save(data, bad)
    assert main([str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_golden_check_reports_unreadable_fixture(tmp_path, capsys):
    bad = tmp_path / "not_a_fixture.pt"
    bad.write_text("hello")
    assert main([str(bad)]) == 2
    assert "not a readable golden fixture" in capsys.readouterr().err


def test_golden_check_fails_on_a_nan_output(golden_fixture, tmp_path, capsys):
    """A NaN in one output must fail the case (max() over NaN used to let it through)."""
    data = torch.load(golden_fixture, weights_only=True)
    sd = data["official_decoder_state_dict"]
    bias = sd["prompt_adapter.uncertain_mlp.layers.2.bias"].clone()
    bias[0] = float("nan")  # the uncertainty map becomes NaN, the masks stay finite
    sd["prompt_adapter.uncertain_mlp.layers.2.bias"] = bias
    bad = tmp_path / "nan.pt"
    torch.save(data, bad)
    results = run_fixture(bad)
    assert all(r.max_error() == float("inf") for r in results)
    assert main([str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out
