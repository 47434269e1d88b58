"""download_weights.py against a hub of the tests' own on 127.0.0.1 (tests/fake_hub.py).

The script runs as a user runs it, in a subprocess, with huggingface_hub's real client pointed at the fake
hub through HF_ENDPOINT (huggingface_hub reads its settings when it is imported). Nothing leaves loopback:
proxies are cleared, Xet and telemetry are off, HF_HOME is a fresh folder, and every server is stopped by
its fixture. The repositories served are tiny checkpoints in Meta's layout (tests/checkpoints.py), except
for one test that serves the demo checkpoint.
"""

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from llama3_support.checkpoint_folder import CHECKPOINT_FILES, STAGING, human_size, staging_lock
from checkpoints import small_params, write_checkpoint
from fake_hub import FakeHub, Fault
from llama3_support.hub_download import MODELS, model_files
from llama3_support.shards import open_weights, write_sharded_copy
from notebook_runner import run_notebook

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "download_weights.py"
# the script and the modules it imports, which sit beside it
SCRIPT_FILES = ("download_weights.py", "llama3_support")
LLAMA3 = "meta-llama/Meta-Llama-3-8B"
LLAMA32 = "meta-llama/Llama-3.2-1B"
LLAMA33_70B = "meta-llama/Llama-3.3-70B-Instruct"  # 8 weight files, one per model-parallel rank
LLAMA31_70B = "meta-llama/Llama-3.1-70B"  # served with its last weight file missing
SHARDED_PARAMS = small_params(dim=64, n_layers=2, n_heads=8, n_kv_heads=8, multiple_of=64)
WEIGHTS = "original/consolidated.00.pth"
TOKEN = "hf_" + secrets.token_hex(16)  # an account that accepted both licenses
NOT_ACCEPTED = "hf_" + secrets.token_hex(16)  # an account that accepted none
# Runs the script as `python download_weights.py ...` would (its own folder first on sys.path), in a process
# that can connect to loopback only; with TEST_FREE_BYTES set, the disk reports that much free space, and
# TEST_READ_ONLY names a folder that os.access reports unwritable (as chmod would for a user other than root).
LAUNCHER = """
import os, runpy, shutil, socket, sys
real_connect = socket.socket.connect
def loopback_only(self, address):
    if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
        raise OSError(f"the tests allow loopback connections only, not {address}")
    return real_connect(self, address)
socket.socket.connect = loopback_only
free = os.environ.pop("TEST_FREE_BYTES", None)
if free is not None:
    real_disk_usage = shutil.disk_usage
    shutil.disk_usage = lambda path: real_disk_usage(path)._replace(free=int(free))
read_only = os.environ.pop("TEST_READ_ONLY", None)
if read_only is not None:
    real_access = os.access
    os.access = lambda path, mode: real_access(path, mode) and not (
        mode & os.W_OK and os.path.realpath(path) == os.path.realpath(read_only))
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""
HUB_SETTINGS = {
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_ETAG_TIMEOUT": "5",
    "HF_HUB_DOWNLOAD_TIMEOUT": "10",
    "DO_NOT_TRACK": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
def repositories(tmp_path_factory) -> dict:
    """Tiny checkpoints laid out as Meta's hub repositories: {repo_id: folder}.

    The Meta-Llama-3-8B stand-in's consolidated.00.pth spans more than two of huggingface_hub's download
    chunks, so that a transfer can be cut between two chunks (a client keeps no partial chunk).
    """
    folders = {}
    root = tmp_path_factory.mktemp("hub")
    params = small_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=64)
    folders[LLAMA3] = write_checkpoint(root / "Meta-Llama-3-8B" / "original", params, seed=1).parent
    params_32 = small_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=64, use_scaled_rope=True)
    folders[LLAMA32] = write_checkpoint(root / "Llama-3.2-1B" / "original", params_32, seed=2, output="tied").parent
    single_file = write_checkpoint(root / "70B-single-file", SHARDED_PARAMS, seed=3)
    folders[LLAMA33_70B] = write_sharded_copy(single_file, root / "Llama-3.3-70B-Instruct" / "original", 8).parent
    folders[LLAMA31_70B] = write_sharded_copy(single_file, root / "Llama-3.1-70B" / "original", 8).parent
    (folders[LLAMA31_70B] / "original" / "consolidated.07.pth").unlink()
    assert (folders[LLAMA3] / WEIGHTS).stat().st_size > 3 * DOWNLOAD_CHUNK_SIZE
    return folders


@pytest.fixture
def hub(repositories, request) -> FakeHub:
    hub = FakeHub()
    request.addfinalizer(hub.stop)
    for repo_id, folder in repositories.items():
        hub.add_repo(repo_id, folder, gated=True)
    hub.add_token(TOKEN, accepted=list(repositories))
    hub.add_token(NOT_ACCEPTED, accepted=())
    return hub.start()


class Runner:
    """Runs download_weights.py in a subprocess that talks to one hub, with a fresh HF_HOME."""

    def __init__(self, endpoint: str, home: Path, script: Path = SCRIPT):
        self.endpoint, self.home, self.script = endpoint, home, script
        self.outputs = []

    def env(self, token, free_bytes=None, read_only=None) -> dict:
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("HF_", "HUGGING")) and "proxy" not in name.lower()}
        env.update(HUB_SETTINGS, HF_ENDPOINT=self.endpoint, HF_HOME=str(self.home), PYTHONUNBUFFERED="1")
        if token:
            env["HF_TOKEN"] = token
        if free_bytes is not None:
            env["TEST_FREE_BYTES"] = str(free_bytes)
        if read_only is not None:
            env["TEST_READ_ONLY"] = str(read_only)
        return env

    def command(self, *args) -> list:
        return [sys.executable, "-c", LAUNCHER, str(self.script), *map(str, args)]

    def __call__(self, *args, token=TOKEN, free_bytes=None, read_only=None, timeout=120) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), env=self.env(token, free_bytes, read_only), cwd=REPO,
                                capture_output=True, text=True, timeout=timeout)
        self.outputs.append(result.stdout + result.stderr)
        assert "loopback connections only" not in self.outputs[-1]
        return result

    def start(self, *args, token=TOKEN) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), env=self.env(token), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def download(hub, tmp_path) -> Runner:
    home = tmp_path / "hf_home"
    home.mkdir()
    return Runner(hub.endpoint, home)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_complete_copy(out: Path, folder: Path, repo_id: str, model: str, hub: FakeHub):
    """out holds the repository's three files, byte for byte, and a source.json that says so."""
    for name in CHECKPOINT_FILES:
        assert sha256_of(out / name) == sha256_of(folder / "original" / name), name
    source = json.loads((out / "source.json").read_text())
    assert (source["kind"], source["repo_id"], source["model"]) == ("hub", repo_id, model)
    assert source["revision"] == hub.repos[repo_id].commit
    for name, record in source["files"].items():
        blob = hub.blob(folder / "original" / name)
        assert (record["size"], record["sha256"]) == (blob.size, blob.sha256)
    assert source["files"]["params.json"]["git_blob_id"] == hub.blob(folder / "original" / "params.json").git_blob_id
    assert not (out / STAGING).exists()


def assert_not_loadable(out: Path):
    """What the notebook checks before it loads anything: the three files. Not all of them may be there."""
    assert not all((out / name).is_file() for name in CHECKPOINT_FILES)
    assert not (out / "source.json").exists()


def assert_token_never_shown(runner: Runner, *folders: Path):
    for output in runner.outputs:
        assert TOKEN not in output and NOT_ACCEPTED not in output
    for folder in (runner.home, *folders):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert TOKEN.encode() not in data and NOT_ACCEPTED.encode() not in data, path


def partial_files(out: Path, name="consolidated.00.pth") -> list:
    return list((out / STAGING).glob(f"{name}.*.incomplete"))


def partial_file(out: Path, name="consolidated.00.pth") -> Path:
    found = partial_files(out, name)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- downloads


def test_clean_download_fetches_verifies_and_records_the_source(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)
    assert "git blob id" in result.stdout and "sha256" in result.stdout
    assert f"LLAMA3_DIR={out} jupyter lab llama3_from_scratch.ipynb" in result.stdout
    # every file came once, whole (the LFS ones redirected to storage); the token went to the hub only
    assert [r.status for r in hub.log(method="GET")] == [200, 302, 200, 302, 200]
    assert all(r.authorized for r in hub.log(server="hub"))
    assert not any(r.authorized for r in hub.log(server="storage"))
    assert_token_never_shown(download, out)


def test_a_second_run_checks_the_files_and_downloads_nothing(hub, download, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    gets = len(hub.log(method="GET"))
    before = {name: (out / name).stat().st_mtime_ns for name in CHECKPOINT_FILES}
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert "nothing downloaded" in result.stdout
    assert len(hub.log(method="GET")) == gets
    assert before == {name: (out / name).stat().st_mtime_ns for name in CHECKPOINT_FILES}


def test_the_default_folder_is_the_notebooks_and_the_printed_command_opens_it(hub, download, tmp_path):
    # the default --out is checkpoints/<model> next to the script: run a copy of the script elsewhere
    copy = tmp_path / "project"
    copy.mkdir()
    for name in SCRIPT_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, copy / name)
    download.script = copy / SCRIPT.name
    result = download()
    assert result.returncode == 0, result.stderr
    assert (copy / "checkpoints" / "Meta-Llama-3-8B" / "source.json").is_file()
    # the notebook's default folder: no LLAMA3_DIR needed
    assert "\n  jupyter lab" in result.stdout and "LLAMA3_DIR" not in result.stdout


def test_a_download_cut_halfway_is_resumed_by_the_next_run(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    cut_at = 2 * DOWNLOAD_CHUNK_SIZE
    # the connection drops after cut_at bytes, and the hub is down when the client retries at once
    hub.add_fault(LLAMA3, WEIGHTS, Fault("cut", at=cut_at))
    hub.add_fault(LLAMA3, WEIGHTS, Fault("unavailable"))
    first = download("--out", out)
    assert first.returncode == 1
    assert "stopped" in first.stderr and "run the same command again to resume" in first.stderr
    assert_not_loadable(out)
    assert partial_file(out).stat().st_size == cut_at

    second = download("--out", out)
    assert second.returncode == 0, second.stderr
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)
    weights = hub.blob(repositories[LLAMA3] / WEIGHTS)
    resumed = [r for r in hub.log(server="storage", method="GET") if r.path.endswith(weights.sha256) and r.range]
    assert resumed[-1].range == f"bytes={cut_at}-" and resumed[-1].status == 206
    assert hub.bytes_sent(weights.sha256) == weights.size  # not one byte sent twice


def test_a_resume_that_the_server_answers_with_the_whole_file_starts_over_cleanly(hub, download, repositories,
                                                                                  tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    hub.add_fault(LLAMA3, WEIGHTS, Fault("cut", at=DOWNLOAD_CHUNK_SIZE))
    hub.add_fault(LLAMA3, WEIGHTS, Fault("unavailable"))
    assert download("--out", out).returncode == 1
    hub.add_fault(LLAMA3, WEIGHTS, Fault("no_range"))  # 200 and every byte, to the Range request
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert hub.log(server="storage", method="GET")[-1].status == 200
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)


def test_a_dropped_connection_is_resumed_within_the_same_run(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    hub.add_fault(LLAMA3, WEIGHTS, Fault("cut", at=DOWNLOAD_CHUNK_SIZE))
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)
    weights = hub.blob(repositories[LLAMA3] / WEIGHTS)
    assert [r.range for r in hub.log(server="storage", method="GET") if r.path.endswith(weights.sha256)] == [
        "", f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
    assert hub.bytes_sent(weights.sha256) == weights.size


def test_ctrl_c_keeps_the_bytes_and_nothing_the_notebook_would_load(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    stall_at = 2 * DOWNLOAD_CHUNK_SIZE
    stall = hub.add_fault(LLAMA3, WEIGHTS, Fault("stall", at=stall_at))
    process = download.start("--out", out)
    try:
        assert stall.stalled.wait(timeout=60), "the download never reached the stall"
        deadline = time.monotonic() + 30
        while sum(path.stat().st_size for path in partial_files(out)) < stall_at:
            assert time.monotonic() < deadline, "the client never wrote the bytes it received"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        stall.release.set()
    download.outputs.append(stdout + stderr)
    assert process.returncode == 130, stderr
    assert f"The {human_size(stall_at)} received so far are kept in" in stderr
    assert "Run the same command again" in stderr
    assert_not_loadable(out)
    assert partial_file(out).stat().st_size == stall_at

    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    weights = hub.blob(repositories[LLAMA3] / WEIGHTS)
    assert hub.log(server="storage", method="GET")[-1].range == f"bytes={stall_at}-"
    assert hub.bytes_sent(weights.sha256) == weights.size
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)
    assert_token_never_shown(download, out)


# ---------------------------------------------------------------- verification


def test_a_corrupted_download_is_reported_and_deleted(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    hub.add_fault(LLAMA3, WEIGHTS, Fault("corrupt"))
    result = download("--out", out)
    assert result.returncode == 1
    weights = hub.blob(repositories[LLAMA3] / WEIGHTS)
    assert "consolidated.00.pth arrived complete but is not the hub's file" in result.stderr
    assert weights.sha256 in result.stderr and "deleted" in result.stderr
    assert_not_loadable(out)
    assert not (out / "consolidated.00.pth").exists()
    assert partial_files(out) == []
    # the next run fetches it afresh
    assert download("--out", out).returncode == 0
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)


def test_a_damaged_file_in_a_finished_folder_is_replaced(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    with open(out / "consolidated.00.pth", "r+b") as weights:  # same size, one byte flipped
        weights.seek(12345)
        byte = weights.read(1)
        weights.seek(12345)
        weights.write(bytes([byte[0] ^ 1]))
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert "consolidated.00.pth: not the hub's file (its sha256 is" in result.stdout
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)


def test_a_damaged_params_json_is_caught_by_its_git_blob_id(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    params = out / "params.json"
    params.write_text(params.read_text().replace('"n_layers": 2', '"n_layers": 3'))
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert "params.json: not the hub's file (its git blob id is" in result.stdout
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)


def test_the_notebook_reads_a_download_and_its_model_name(hub, download, tmp_path):
    """Llama 3.2's RoPE scale factor (32) comes from the model name that source.json records."""
    out = tmp_path / "Llama-3.2-1B"
    result = download("--model", "Llama-3.2-1B", "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "source.json").read_text())["model"] == "Llama-3.2-1B"
    results = run_notebook(out, names=("model_name", "rope_scale_factor"), max_new_tokens=1)
    assert (results["model_name"], results["rope_scale_factor"]) == ("Llama-3.2-1B", 32.0)


# ---------------------------------------------------------------- refusals before a byte moves


def test_no_token_says_how_to_create_and_pass_one(hub, download, tmp_path):
    result = download("--out", tmp_path / "out", token=None)
    assert result.returncode == 1
    assert "no Hugging Face token was found" in result.stderr
    assert f"{hub.endpoint}/{LLAMA3}" in result.stderr and f"{hub.endpoint}/settings/tokens" in result.stderr
    assert "HF_TOKEN=hf_..." in result.stderr and "hf auth login" in result.stderr
    assert [r.status for r in hub.log()] == [401]
    assert not (tmp_path / "out").exists()


def test_a_token_saved_by_hf_auth_login_is_used(hub, download, tmp_path):
    (download.home / "token").write_text(TOKEN)  # where `hf auth login` saves it
    result = download("--out", tmp_path / "out", token=None)
    assert result.returncode == 0, result.stderr
    assert "token from `hf auth login`" in result.stdout
    assert all(r.authorized for r in hub.log(server="hub"))


def test_a_license_not_accepted_points_to_its_page(hub, download, tmp_path):
    result = download("--model", "Llama-3.2-1B", "--out", tmp_path / "out", token=NOT_ACCEPTED)
    assert result.returncode == 1
    assert "does not give this token access to meta-llama/Llama-3.2-1B (403)" in result.stderr
    assert f"Open {hub.endpoint}/{LLAMA32}" in result.stderr
    assert [r.status for r in hub.log()] == [403]
    assert not (tmp_path / "out").exists()
    assert_token_never_shown(download, tmp_path)


def test_a_rejected_token_says_where_it_came_from(hub, download, tmp_path):
    result = download("--out", tmp_path / "out", token="hf_revoked")
    assert result.returncode == 1
    assert "rejected the token from the HF_TOKEN environment variable (401" in result.stderr
    assert "hf_revoked" not in result.stderr


def test_an_unknown_repository_is_named(hub, download, tmp_path):
    result = download("--model", "Llama-3.2-3B", "--out", tmp_path / "out")  # not on this hub
    assert result.returncode == 1
    assert "The hub has no repository meta-llama/Llama-3.2-3B" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_name_lists_the_supported_ones(download, tmp_path):
    result = download("--model", "Llama-3.2-1B-Instuct", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "Did you mean Llama-3.2-1B-Instruct?" in result.stderr
    assert all(name in result.stderr for name in MODELS)


def test_too_little_disk_says_how_much_is_needed_and_free(hub, download, repositories, tmp_path):
    out = tmp_path / "out"
    result = download("--out", out, free_bytes=100 << 20)
    assert result.returncode == 1
    total = sum((repositories[LLAMA3] / "original" / name).stat().st_size
                for name in CHECKPOINT_FILES)
    needed = human_size(total)
    assert f"{needed} still to write, plus a margin of 256.0 MiB, but the disk has 100.0 MiB free" in result.stderr
    assert hub.log(method="GET") == []
    assert not out.exists()


def test_an_unreachable_hub_says_to_check_the_network(download, tmp_path):
    with socket_closed_port() as port:
        download.endpoint = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        result = download("--out", tmp_path / "out")
    assert result.returncode == 1
    assert f"Cannot reach the Hugging Face hub at http://127.0.0.1:{port}" in result.stderr
    assert "--demo" in result.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_without_the_hub_a_finished_folder_is_checked_against_its_record(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    with socket_closed_port() as port:
        download.endpoint = f"http://127.0.0.1:{port}"
        result = download("--out", out)
        assert result.returncode == 0, result.stderr
        assert "The hub cannot be reached" in result.stdout and "still have the size and sha256" in result.stdout
        (out / "consolidated.00.pth").write_bytes(b"truncated")
        result = download("--out", out)
        assert result.returncode == 1
        assert "Cannot reach the Hugging Face hub" in result.stderr


def test_a_folder_holding_something_else_is_left_untouched(hub, download, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "consolidated.00.pth").write_bytes(b"somebody's weights")
    result = download("--out", out)
    assert result.returncode == 1
    assert "already holds files that this project's scripts did not write (consolidated.00.pth)" in result.stderr
    assert (out / "consolidated.00.pth").read_bytes() == b"somebody's weights"
    assert hub.log() == []


def test_a_repository_root_copied_by_another_tool_points_to_its_original_folder(hub, download, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    (out / "original").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    result = download("--out", out)
    assert result.returncode == 1
    assert "looks like a copy of a Hugging Face repository" in result.stderr
    assert f"LLAMA3_DIR={out / 'original'}" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "original"]
    assert hub.log() == []


def test_a_source_json_that_is_not_json_is_refused_before_any_request(hub, download, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    out.mkdir()
    (out / "source.json").write_text('{"kind": "hub", ')
    result = download("--out", out)
    assert result.returncode == 1
    assert f"{out / 'source.json'} cannot be read: it is not JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "source.json").read_text() == '{"kind": "hub", '
    assert hub.log() == []


def test_a_folder_that_cannot_be_written_is_refused_before_any_request(hub, download, tmp_path):
    """os.access is told the folder is read-only: chmod alone does not stop root, whom the tests may run as."""
    parent = tmp_path / "read-only"
    parent.mkdir()
    result = download("--out", parent / "Meta-Llama-3-8B", read_only=parent)
    assert result.returncode == 1
    assert f"{parent} is not writable by this user" in result.stderr and "--out" in result.stderr
    assert hub.log() == []
    assert list(parent.iterdir()) == []


def test_a_file_as_out_is_refused_before_any_request(hub, download, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    out.write_text("not a folder")
    result = download("--out", out)
    assert result.returncode == 1
    assert f"{out} is a file, not a folder" in result.stderr
    assert out.read_text() == "not a folder"
    assert hub.log() == []


def test_a_redownload_deletes_nothing_it_did_not_write(hub, download, repositories, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    (out / "notes.txt").write_text("my notes")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("a run")
    for sibling in (tmp_path / "Meta-Llama-3-8B.partial", tmp_path / "Meta-Llama-3-8B.old"):
        sibling.mkdir()
        (sibling / "mine.txt").write_text("mine")
    (out / "consolidated.00.pth").write_bytes(b"damaged")  # downloaded again, through the staging folder
    result = download("--out", out)
    assert result.returncode == 0, result.stderr
    assert_complete_copy(out, repositories[LLAMA3], LLAMA3, "Meta-Llama-3-8B", hub)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "runs" / "log.txt").read_text() == "a run"
    for sibling in (tmp_path / "Meta-Llama-3-8B.partial", tmp_path / "Meta-Llama-3-8B.old"):
        assert (sibling / "mine.txt").read_text() == "mine"


def test_a_second_run_while_one_downloads_is_refused_and_deletes_nothing(hub, download, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    (out / "consolidated.00.pth").write_bytes(b"damaged")  # to be fetched again
    gets = len(hub.log(method="GET"))
    with staging_lock(out) as staging:  # as a run in another terminal holds it
        result = download("--out", out)
        assert list(staging.iterdir()) == []
    assert result.returncode == 1
    assert "Another run is writing" in result.stderr and "Wait for it to finish" in result.stderr
    assert len(hub.log(method="GET")) == gets
    assert (out / "consolidated.00.pth").read_bytes() == b"damaged"


def test_a_staging_folder_that_is_not_ours_is_left_alone(hub, download, tmp_path):
    out = tmp_path / "Meta-Llama-3-8B"
    assert download("--out", out).returncode == 0
    (out / STAGING).mkdir()
    (out / STAGING / "mine.txt").write_text("mine")
    result = download("--out", out)
    assert result.returncode == 1
    assert f"{out / STAGING} holds files that this project's scripts did not put there" in result.stderr
    assert (out / STAGING / "mine.txt").read_text() == "mine"


# ---------------------------------------------------------------- a model split over 8 files


def assert_complete_sharded_copy(out: Path, folder: Path, hub: FakeHub):
    """out holds all 10 files of the Llama 3.3 70B stand-in, byte for byte, each recorded in source.json."""
    names = model_files("Llama-3.3-70B-Instruct")
    assert len(names) == 10 and names[-1] == "consolidated.07.pth"
    for name in names:
        assert sha256_of(out / name) == sha256_of(folder / "original" / name), name
    source = json.loads((out / "source.json").read_text())
    assert (source["repo_id"], source["revision"]) == (LLAMA33_70B, hub.repos[LLAMA33_70B].commit)
    assert list(source["files"]) == list(names)
    assert all(source["files"][name]["sha256"] == hub.blob(folder / "original" / name).sha256 for name in names)
    assert not (out / STAGING).exists()


def test_each_model_has_as_many_weight_files_as_metas_record_of_it_says():
    from llama_models.sku_list import all_registered_models

    files_per_repo = {model.huggingface_repo: model.pth_file_count for model in all_registered_models()
                      if model.huggingface_repo}
    for name, repo_id in MODELS.items():  # llama-models names Meta-Llama-3-70B's repository Llama-3-70B
        count = files_per_repo.get(repo_id, files_per_repo.get(repo_id.replace("/Meta-Llama-3-", "/Llama-3-")))
        assert len([file for file in model_files(name) if file.startswith("consolidated.")]) == count, name


def test_a_70b_model_fetches_its_8_weight_files_verified(hub, download, repositories, tmp_path):
    out = tmp_path / "Llama-3.3-70B-Instruct"
    result = download("--model", "Llama-3.3-70B-Instruct", "--out", out)
    assert result.returncode == 0, result.stderr
    assert_complete_sharded_copy(out, repositories[LLAMA33_70B], hub)
    assert "Llama-3.3-70B-Instruct is ready" in result.stdout and "10 files verified" in result.stdout
    # params.json from git, then tokenizer.model and every weight file redirected to storage, each fetched once
    assert [r.status for r in hub.log(method="GET")] == [200] + [302, 200] * 9
    assert all(r.authorized for r in hub.log(server="hub"))
    # the folder opens as one model, checked against its params.json
    weights = open_weights(out, SHARDED_PARAMS)
    assert len(weights.files) == 8 and weights["output.weight"].shape == (128256, 64)
    assert_token_never_shown(download, out)


def test_too_little_disk_for_a_70b_model_counts_all_8_files_before_a_byte_moves(hub, download, repositories,
                                                                                 tmp_path):
    out = tmp_path / "out"
    result = download("--model", "Llama-3.3-70B-Instruct", "--out", out, free_bytes=100 << 20)
    assert result.returncode == 1
    total = sum((repositories[LLAMA33_70B] / "original" / name).stat().st_size
                for name in model_files("Llama-3.3-70B-Instruct"))
    assert f"{human_size(total)} still to write, plus a margin of 256.0 MiB, but the disk has 100.0 MiB" in result.stderr
    assert hub.log(method="GET") == []
    assert not out.exists()


def test_a_70b_download_stopped_in_one_file_resumes_there(hub, download, repositories, tmp_path):
    out = tmp_path / "Llama-3.3-70B-Instruct"
    stopped = "original/consolidated.05.pth"
    hub.add_fault(LLAMA33_70B, stopped, Fault("cut", at=0))  # the connection drops, and the retry finds the hub down
    hub.add_fault(LLAMA33_70B, stopped, Fault("unavailable"))
    first = download("--model", "Llama-3.3-70B-Instruct", "--out", out)
    assert first.returncode == 1
    assert "The download of consolidated.05.pth stopped" in first.stderr
    assert "run the same command again to resume" in first.stderr
    assert not (out / "source.json").exists()  # not finished, so not a checkpoint
    assert [(out / name).is_file() for name in model_files("Llama-3.3-70B-Instruct")[2:]] == [True] * 5 + [False] * 3

    second = download("--model", "Llama-3.3-70B-Instruct", "--out", out)
    assert second.returncode == 0, second.stderr
    assert_complete_sharded_copy(out, repositories[LLAMA33_70B], hub)
    for name in model_files("Llama-3.3-70B-Instruct"):  # the files verified by the first run were not fetched again
        blob = hub.blob(repositories[LLAMA33_70B] / "original" / name)
        assert hub.bytes_sent(blob.sha256) == blob.size, name


def test_a_70b_repository_without_one_of_its_weight_files_is_refused_before_a_byte_moves(hub, download, tmp_path):
    result = download("--model", "Llama-3.1-70B", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "meta-llama/Llama-3.1-70B lacks a file of Meta's original layout" in result.stderr
    assert "consolidated.07.pth in original/" in result.stderr and "original/consolidated.07.pth" in result.stderr
    assert hub.log(method="GET") == []
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the demo checkpoint, served


def test_the_demo_checkpoint_served_by_the_hub_downloads_whole(hub, download, demo_checkpoint, tmp_path):
    """1.4 GB through the real client: the large-file path at a realistic size."""
    folder = tmp_path / "demo-repo"
    (folder / "original").mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        (folder / "original" / name).symlink_to(demo_checkpoint / name)
    hub.add_repo("meta-llama/Meta-Llama-3-8B-Instruct", folder)
    hub.blob(folder / WEIGHTS)  # hashed before the client asks, as the real hub has it ready
    hub.add_token(TOKEN, accepted=[LLAMA3, LLAMA32, "meta-llama/Meta-Llama-3-8B-Instruct"])
    out = tmp_path / "Meta-Llama-3-8B-Instruct"
    result = download("--model", "Meta-Llama-3-8B-Instruct", "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr
    source = json.loads((out / "source.json").read_text())
    weights = source["files"]["consolidated.00.pth"]
    assert weights["size"] == (demo_checkpoint / "consolidated.00.pth").stat().st_size
    assert weights["sha256"] == hub.blob(folder / WEIGHTS).sha256


class socket_closed_port:
    """A loopback port that nothing listens on, for as long as the block runs."""

    def __enter__(self) -> int:
        import socket

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()
