"""The walkthrough's settings: LLAMA3_* environment variables, each read and checked before any file is touched.

A typo stops the notebook at once, with the accepted values, rather than after a forward pass that takes
minutes on the 8B. The table of every setting is the last section of llama3_from_scratch.ipynb.
"""

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llama3_support.checkpoint_folder import CHECKPOINTS, SOURCE_FILE

DEFAULT_CHECKPOINT_DIR = "checkpoints/Meta-Llama-3-8B"  # relative to where the kernel runs: the repository
DEFAULT_MODEL = Path(DEFAULT_CHECKPOINT_DIR).name
SMOLLM2_MODEL = "SmolLM2-135M-Instruct"
# With no LLAMA3_DIR: the first of these folders of checkpoints/ that holds a checkpoint, else any other one
PREFERRED_CHECKPOINTS = (DEFAULT_MODEL, SMOLLM2_MODEL)
DEFAULT_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "
DEFAULT_CHAT = "What is the answer to the ultimate question of life, the universe, and everything?"
# the prompt of the stored SmolLM2 run: long enough, with words that repeat, for its heads' patterns to show
SMOLLM2_PROMPT = ("The capital of Germany is Berlin. The capital of Italy is Rome. The capital of Spain is Madrid. "
                  "The capital of France is")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def setting(name: str, default: str, convert=str, is_valid=lambda value: True, accepted: str = "") -> object:
    """LLAMA3_<name> from the environment (or default), converted; a value that does not fit stops here."""
    text = os.environ.get(f"LLAMA3_{name}", default)
    try:
        value = convert(text)
        fits = is_valid(value)
    except (ValueError, KeyError, RuntimeError):
        fits = False
    if not fits:
        raise ValueError(f"LLAMA3_{name}={text!r} is not accepted: use {accepted}.")
    return value


def holds_checkpoint(folder: Path) -> bool:
    """A folder with Meta's params.json, itself or in a hub repository's original/ folder."""
    return (folder / "params.json").is_file() or (folder / "original" / "params.json").is_file()


def is_demo(folder: Path) -> bool:
    try:
        return json.loads((folder / SOURCE_FILE).read_text()).get("kind") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


def checkpoints_on_disk(home: Path = None) -> list:
    """The checkpoint folders in checkpoints/, in the order the default takes them: Meta's 8B, SmolLM2, then
    any other real model by name, the demo's random weights last."""
    home = Path(home or CHECKPOINTS)
    found = sorted(folder for folder in home.glob("*") if folder.is_dir() and holds_checkpoint(folder))
    preferred = [home / name for name in PREFERRED_CHECKPOINTS if home / name in found]
    others = [folder for folder in found if folder not in preferred]
    return preferred + [folder for folder in others if not is_demo(folder)] + [f for f in others if is_demo(f)]


def default_checkpoint_dir(home: Path = None) -> Path:
    """The folder read when LLAMA3_DIR is not set: Meta-Llama-3-8B if it is there, else the checkpoint that is
    (SmolLM2 first); with none, Meta-Llama-3-8B, whose absence the checkpoint check then explains."""
    on_disk = checkpoints_on_disk(home)
    return on_disk[0] if on_disk else Path(DEFAULT_CHECKPOINT_DIR)


def model_of(folder: Path) -> str:
    """source.json's model (what download_weights.py records), else the folder's name."""
    for candidate in (folder, folder / "original"):
        try:
            return json.loads((candidate / SOURCE_FILE).read_text())["model"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return folder.name


def default_prompt_for(folder: Path) -> str:
    """The prompt a checkpoint is known to answer: SMOLLM2_PROMPT on SmolLM2 (" Paris"), else Meta's ("42")."""
    return SMOLLM2_PROMPT if model_of(folder) == SMOLLM2_MODEL else DEFAULT_PROMPT


def shown(folder: Path) -> str:
    """A folder as the reader would type it: relative to the working folder where it lies below it."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def device_is_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "cpu" or (device.type == "mps" and torch.backends.mps.is_available())


@dataclass(frozen=True)
class WalkthroughSettings:
    checkpoint_dir: Path        # LLAMA3_DIR: the checkpoint folder
    prompt: str                 # LLAMA3_PROMPT: the text to continue
    compute_dtype: torch.dtype  # LLAMA3_DTYPE: bf16 as Meta's code computes, or float32
    device: torch.device        # LLAMA3_DEVICE: where the arithmetic runs
    stream: str                 # LLAMA3_STREAM: on a GPU, keep the weights there ("0"), copy each layer anew ("1"), or "auto"
    max_new_tokens: int         # LLAMA3_MAX_NEW_TOKENS: how many tokens generation adds at most
    temperature: float          # LLAMA3_TEMPERATURE: 0 is greedy; above 0 samples with top_p
    top_p: float                # LLAMA3_TOP_P: the nucleus kept when sampling
    seed: int                   # LLAMA3_SEED: the sampler's seed
    chat_message: str           # LLAMA3_CHAT: the user's message in the chat section
    rope_scale_factor: float    # LLAMA3_ROPE_SCALE_FACTOR: overrides the factor the model's name implies; None if unset


def read_walkthrough_settings() -> WalkthroughSettings:
    """Every LLAMA3_* setting of the walkthrough, converted and checked. With no LLAMA3_DIR the checkpoint on
    this disk is taken (default_checkpoint_dir), and said; with no LLAMA3_PROMPT, the prompt it answers."""
    if "LLAMA3_DIR" in os.environ:
        checkpoint_dir = Path(setting("DIR", DEFAULT_CHECKPOINT_DIR))
    else:
        checkpoint_dir = default_checkpoint_dir()
        if checkpoint_dir.is_dir():
            print(f"LLAMA3_DIR is not set: reading {shown(checkpoint_dir)}, the checkpoint found in "
                  f"{shown(checkpoint_dir.parent)} (set LLAMA3_DIR to read another).")
    return WalkthroughSettings(
        checkpoint_dir=checkpoint_dir,
        prompt=setting("PROMPT", default_prompt_for(checkpoint_dir)),
        compute_dtype=setting("DTYPE", "bfloat16", DTYPES.__getitem__, accepted="bfloat16 or float32"),
        device=setting("DEVICE", best_device(), torch.device, device_is_available,
                       f"cpu, or a device this machine has (cuda: {torch.cuda.is_available()}, "
                       f"mps: {torch.backends.mps.is_available()})"),
        stream=setting("STREAM", "auto", is_valid=lambda value: value in ("auto", "0", "1"), accepted="auto, 0 or 1"),
        max_new_tokens=setting("MAX_NEW_TOKENS", "20", int, lambda n: n >= 0, "a whole number, 0 or more"),
        temperature=setting("TEMPERATURE", "0", float, lambda t: 0 <= t < math.inf, "0 (greedy) or a positive number"),
        top_p=setting("TOP_P", "0.9", float, lambda p: 0 < p <= 1, "a number above 0 and at most 1"),
        seed=setting("SEED", "0", int, accepted="a whole number"),
        chat_message=setting("CHAT", DEFAULT_CHAT),
        rope_scale_factor=setting("ROPE_SCALE_FACTOR", "", lambda text: float(text) if text else None,
                                  lambda factor: factor is None or 0 < factor < math.inf,
                                  "a positive number: 8 (Llama 3.1) or 32 (Llama 3.2)"),
    )
