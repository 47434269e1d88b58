"""Building the demo checkpoint: the folder rules of checkpoint_folder.py, as `download_weights.py --demo` meets them.

The tests build a demo with small shapes (the folder rules do not depend on them) into a temporary folder,
never the shared one in checkpoints/. A refusal must come before any weight is drawn: where a test expects
one, drawing weights fails the test.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llama3_support import checkpoint_folder
from llama3_support import demo_checkpoint
import download_weights
from llama3_support.checkpoint_folder import CHECKPOINT_FILES, STAGING, CheckpointError
from checkpoints import small_params

REPO = Path(__file__).resolve().parent.parent
SMALL_PARAMS_JSON = json.dumps(small_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=64))
# `python download_weights.py ARGS` with small demo shapes; with TEST_SIGINT_WHILE_SAVING set, Ctrl-C arrives
# (a real SIGINT) as soon as the save has written its first bytes.
LAUNCHER = f"""
import functools, os, signal, sys
sys.path.insert(0, {str(REPO)!r})
import download_weights
from llama3_support import demo_checkpoint
download_weights.build_demo = functools.partial(demo_checkpoint.build_demo, params_json={SMALL_PARAMS_JSON!r})
if os.environ.get("TEST_SIGINT_WHILE_SAVING"):
    write = demo_checkpoint.ProgressWriter.write
    def interrupted_write(self, data):
        os.kill(os.getpid(), signal.SIGINT)
        return write(self, data)
    demo_checkpoint.ProgressWriter.write = interrupted_write
sys.exit(download_weights.main(sys.argv[1:]))
"""


def run_script(*args, sigint_while_saving=False, home=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"HOME": str(home)} if home else {}))
    if sigint_while_saving:
        env["TEST_SIGINT_WHILE_SAVING"] = "1"
    return subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def build_small_demo(out: Path, seed: int = 0) -> Path:
    return demo_checkpoint.build_demo(out, seed=seed, params_json=SMALL_PARAMS_JSON)


def forbid_drawing_weights(monkeypatch):
    """For tests that expect a refusal: drawing the weights fails the test."""
    def draw(*args, **kwargs):
        raise AssertionError("weights were drawn before the refusal")
    monkeypatch.setattr(demo_checkpoint, "make_demo_state_dict", draw)


@pytest.fixture
def no_weights_drawn(monkeypatch):
    forbid_drawing_weights(monkeypatch)


def file_bytes(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES}


def assert_nothing_staged(out: Path):
    assert not (out / STAGING).exists()
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == []


# ---------------------------------------------------------------- a rebuild replaces only its own files


def test_a_rebuild_replaces_the_checkpoint_and_keeps_the_users_files(tmp_path):
    out = build_small_demo(tmp_path / "demo", seed=0)
    before = file_bytes(out)
    (out / "notes.txt").write_text("my notes")
    (out / "runs").mkdir()
    (out / "runs" / "run1.json").write_text("{}")
    build_small_demo(out, seed=1)
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "runs" / "run1.json").read_text() == "{}"
    assert json.loads((out / "source.json").read_text())["seed"] == 1
    assert file_bytes(out)["consolidated.00.pth"] != before["consolidated.00.pth"]
    assert demo_checkpoint.demo_is_complete(out)
    assert_nothing_staged(out)


def test_a_rebuild_leaves_sibling_partial_and_old_folders_alone(tmp_path):
    out = tmp_path / "demo"
    siblings = [tmp_path / "demo.partial", tmp_path / "demo.old"]
    for sibling in siblings:
        sibling.mkdir()
        (sibling / "mine.txt").write_text(sibling.name)
    build_small_demo(out)
    build_small_demo(out)
    for sibling in siblings:
        assert (sibling / "mine.txt").read_text() == sibling.name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "demo.old", "demo.partial"]


def test_a_rebuild_through_a_link_writes_into_its_folder_and_keeps_the_link(tmp_path):
    target = build_small_demo(tmp_path / "demo")
    link = tmp_path / "link"
    link.symlink_to(target)
    result = run_script("--demo", "--out", link, "--seed", 2)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert json.loads((target / "source.json").read_text())["seed"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "link"]


def test_a_killed_builds_leftovers_are_cleared_by_the_next_build(tmp_path):
    out = build_small_demo(tmp_path / "demo")
    staging = checkpoint_folder.open_staging(out, demo_checkpoint.demo_source(seed=0))  # as a killed build left it
    (staging / "consolidated.00.pth").write_bytes(b"half a file")
    build_small_demo(out)
    assert demo_checkpoint.demo_is_complete(out)
    assert_nothing_staged(out)


def test_a_second_build_while_one_runs_is_refused_and_deletes_nothing(tmp_path):
    out = build_small_demo(tmp_path / "demo")
    with checkpoint_folder.staging_lock(out) as staging:  # as a build in another terminal holds it
        checkpoint_folder.open_staging(out, demo_checkpoint.demo_source(seed=0))
        (staging / "consolidated.00.pth").write_bytes(b"the other run's bytes so far")
        with pytest.raises(CheckpointError, match="Another run is writing .*demo right now"):
            build_small_demo(out)
        assert (staging / "consolidated.00.pth").read_bytes() == b"the other run's bytes so far"
    assert demo_checkpoint.demo_is_complete(out)


# ---------------------------------------------------------------- folders that are not the demo's


def test_a_folder_with_the_checkpoint_names_that_is_not_ours_is_refused(tmp_path, no_weights_drawn):
    out = tmp_path / "mine"
    out.mkdir()
    for name in CHECKPOINT_FILES:
        (out / name).write_text(f"my {name}")
    with pytest.raises(CheckpointError, match="no source.json says that this project's scripts wrote them") as error:
        build_small_demo(out)
    assert f"LLAMA3_DIR={out}" in str(error.value)
    assert file_bytes(out) == {name: f"my {name}".encode() for name in CHECKPOINT_FILES}
    assert sorted(path.name for path in out.iterdir()) == sorted(CHECKPOINT_FILES)


def test_a_folder_of_the_users_own_files_is_refused(tmp_path, no_weights_drawn):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "consolidated.00.pth").write_text("my weights")
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match=r"did not write \(consolidated.00.pth, notes.txt\)"):
        build_small_demo(out)
    assert (out / "consolidated.00.pth").read_text() == "my weights"


def test_a_folder_holding_a_download_is_refused(tmp_path, no_weights_drawn):
    out = tmp_path / "Meta-Llama-3-8B"
    out.mkdir()
    (out / "source.json").write_text(json.dumps({"kind": "hub", "repo_id": "meta-llama/Meta-Llama-3-8B"}))
    with pytest.raises(CheckpointError, match="already holds a download of meta-llama/Meta-Llama-3-8B, not the demo"):
        build_small_demo(out)


def test_a_hub_repository_root_is_refused_with_the_folder_to_read(tmp_path, no_weights_drawn):
    out = tmp_path / "Meta-Llama-3-8B"
    (out / "original").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="Meta's files, which the notebook reads, are in its original/") as error:
        build_small_demo(out)
    assert f"LLAMA3_DIR={out / 'original'}" in str(error.value)


def test_a_staging_folder_that_is_not_ours_is_refused(tmp_path, monkeypatch):
    out = build_small_demo(tmp_path / "demo")
    forbid_drawing_weights(monkeypatch)
    (out / STAGING).mkdir()
    (out / STAGING / "mine.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds files that this project's scripts did not put there"):
        build_small_demo(out)
    assert (out / STAGING / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("text, problem", [
    ("{oops", "it is not JSON"), ("[1, 2]", "it holds a JSON list, not an object"), ("", "it is not JSON")])
def test_a_source_json_that_cannot_be_read_is_refused(tmp_path, no_weights_drawn, text, problem):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "source.json").write_text(text)
    with pytest.raises(CheckpointError, match=f"source.json cannot be read: {problem}"):
        build_small_demo(out)
    assert (out / "source.json").read_text() == text


# ---------------------------------------------------------------- --out that cannot be written


def test_out_that_is_a_file_is_refused(tmp_path, no_weights_drawn):
    out = tmp_path / "demo"
    out.write_text("a file")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        build_small_demo(out)
    assert out.read_text() == "a file"


def test_out_below_a_file_is_refused(tmp_path, no_weights_drawn):
    (tmp_path / "a-file").write_text("a file")
    with pytest.raises(CheckpointError, match="cannot be made: .*a-file is a file, not a folder"):
        build_small_demo(tmp_path / "a-file" / "demo")


def test_out_that_is_a_link_to_nowhere_is_refused(tmp_path, no_weights_drawn):
    out = tmp_path / "demo"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="is a symbolic link to .*nowhere, which does not exist"):
        build_small_demo(out)
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch, no_weights_drawn):
    """chmod makes the folder read-only; root writes there anyway, so under root os.access is told what chmod
    means for everyone else."""
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and not (
            mode & os.W_OK and not Path(path).stat().st_mode & stat.S_IWUSR))
    try:
        with pytest.raises(CheckpointError, match="read-only is not writable by this user"):
            build_small_demo(parent / "demo")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(stat.S_IRWXU)


def test_too_little_disk_is_refused_before_any_weight_is_drawn(tmp_path, monkeypatch, no_weights_drawn):
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=100 << 20))
    with pytest.raises(CheckpointError, match="but the disk has 100.0 MiB free"):
        build_small_demo(tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_the_demos_size_is_known_before_its_weights_are_drawn():
    params = json.loads(SMALL_PARAMS_JSON)
    state_dict = demo_checkpoint.make_demo_state_dict(params)
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes()
                for tensor in state_dict.values()}
    assert demo_checkpoint.demo_weight_bytes(params) == sum(storages.values())


# ---------------------------------------------------------------- interrupted or failed builds


def test_ctrl_c_while_saving_exits_130_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "demo"
    result = run_script("--demo", "--out", out, sigint_while_saving=True)
    assert result.returncode == 130, result.stderr
    assert "Interrupted. Nothing half-written is left behind." in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # the folder this run made is gone too


def test_ctrl_c_while_rebuilding_keeps_the_finished_demo(tmp_path):
    out = build_small_demo(tmp_path / "demo")
    (out / "notes.txt").write_text("my notes")
    before = file_bytes(out)
    result = run_script("--demo", "--out", out, "--seed", 1, sigint_while_saving=True)
    assert result.returncode == 130, result.stderr
    assert file_bytes(out) == before and demo_checkpoint.demo_is_complete(out)
    assert (out / "notes.txt").read_text() == "my notes"
    assert_nothing_staged(out)


def test_a_failed_write_is_one_paragraph_and_removes_the_partial_file(tmp_path, monkeypatch):
    def disk_full(state_dict, path, total_bytes):
        path.write_bytes(b"the first bytes")
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr(demo_checkpoint, "save_with_progress", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device .*removed again"):
        build_small_demo(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command line


def test_the_command_builds_the_demo_and_names_the_notebook_command(tmp_path):
    out = tmp_path / "demo"
    result = run_script("--demo", "--out", out, "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert f"Demo checkpoint ready in {out}" in result.stdout and f"LLAMA3_DIR={out} jupyter lab" in result.stdout
    assert json.loads((out / "source.json").read_text())["seed"] == 3
    assert sorted(path.name for path in out.iterdir()) == sorted([*CHECKPOINT_FILES, "source.json"])


def test_a_quoted_tilde_in_out_means_the_home_folder(tmp_path):
    result = run_script("--demo", "--out", "~/demo", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert demo_checkpoint.demo_is_complete(tmp_path / "demo")
    assert not (REPO / "~").exists()


def test_a_refusal_exits_1_with_one_paragraph(tmp_path, capsys, no_weights_drawn):
    out = tmp_path / "demo"
    out.write_text("a file")
    assert download_weights.main(["--demo", "--out", str(out)]) == 1
    [paragraph] = capsys.readouterr().err.strip().splitlines()
    assert paragraph.startswith("error: ") and "choose another folder with --out" in paragraph


@pytest.mark.parametrize("args, message", [
    (["--demo", "--seed", "-1"], "'-1' is not a whole number from 0 to 2**64 - 1"),
    (["--demo", "--seed", str(2**64)], "is not a whole number from 0 to 2**64 - 1"),
    (["--seed", "1"], "--seed sets the demo's random weights: use it together with --demo"),
])
def test_a_bad_seed_is_a_usage_error(capsys, args, message):
    with pytest.raises(SystemExit) as exit_status:
        download_weights.main(args)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- the benchmark's full-size builder, same rules


def test_the_full_size_builder_keeps_the_users_files_and_refuses_the_demo(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import full_size_checkpoint

    out = full_size_checkpoint.build_full_size(tmp_path / "full", params_json=SMALL_PARAMS_JSON)
    (out / "notes.txt").write_text("my notes")
    (tmp_path / "full.partial").mkdir()
    full_size_checkpoint.build_full_size(out, seed=1, params_json=SMALL_PARAMS_JSON)
    assert full_size_checkpoint.full_size_is_complete(out)
    assert (out / "notes.txt").read_text() == "my notes" and (tmp_path / "full.partial").is_dir()
    assert_nothing_staged(out)
    demo = build_small_demo(tmp_path / "demo")
    with pytest.raises(CheckpointError, match="already holds the demo checkpoint, not a full-size random checkpoint"):
        full_size_checkpoint.build_full_size(demo, params_json=SMALL_PARAMS_JSON)
