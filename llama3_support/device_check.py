"""A laptop's device self-test: one tiny walkthrough step on the device the notebook would pick, held to float64.

    python -m llama3_support.device_check [--settings FILE]

The step is the walkthrough's own arithmetic on a few numbers: RoPE as a product of complex numbers, a bf16
matrix product (queries times keys) and the softmax of the scores. It runs on the notebook's default device
(CUDA, else Apple's MPS, else the CPU) and is compared with the same step on the CPU in float64, within the
project's rounding rule (llama3_support/rounding.py). A device that fails (an operation it lacks, or a wrong
number) is not used: the test says so and the setting falls back to the CPU. With --settings, the device
chosen is written there as LLAMA3_DEVICE (a JSON object), which `python workshop.py lab` passes on.
"""

import argparse
import json
import math
from pathlib import Path

import torch

from llama3_support.rounding import largest_difference, rounding_tolerance
from llama3_support.settings import best_device

HEAD_DIM, POSITIONS, THETA = 8, 4, 500000.0  # a head of 8 numbers at 4 positions: small enough to check by eye
COMPUTE_DTYPE = torch.bfloat16


def tiny_inputs() -> tuple:
    """Queries and keys of one head, seeded, in float64."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(POSITIONS, HEAD_DIM, generator=generator, dtype=torch.float64),
            torch.randn(POSITIONS, HEAD_DIM, generator=generator, dtype=torch.float64))


def rotations(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The walkthrough's RoPE: unit complex numbers, one per position and pair of dimensions."""
    real = torch.float64 if dtype == torch.float64 else torch.float32
    frequencies = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, device=device, dtype=real) / HEAD_DIM))
    angles = torch.outer(torch.arange(POSITIONS, device=device, dtype=real), frequencies)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).to(rotation.real.dtype).contiguous())
    return torch.view_as_real(pairs * rotation).reshape(x.shape)


def attention_step(queries: torch.Tensor, keys: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple:
    """RoPE on queries and keys, their scaled product in dtype, the causal softmax: each result on the CPU."""
    rotation = rotations(device, dtype)
    q = apply_rope(queries.to(device), rotation).to(dtype)
    k = apply_rope(keys.to(device), rotation).to(dtype)
    scores = torch.matmul(q, k.T) / math.sqrt(HEAD_DIM)
    mask = torch.full((POSITIONS, POSITIONS), float("-inf"), device=device).triu(1)
    probabilities = torch.softmax(scores.float() + mask, dim=-1)
    return tuple(result.to("cpu") for result in (q, scores, probabilities))


def check_device(device) -> str:
    """None when the step on device matches the float64 truth; else what went wrong, in words."""
    device = torch.device(device)
    queries, keys = tiny_inputs()
    truth = attention_step(queries, keys, torch.device("cpu"), torch.float64)
    reference = attention_step(queries, keys, torch.device("cpu"), COMPUTE_DTYPE)
    try:
        results = attention_step(queries, keys, device, COMPUTE_DTYPE)
    except Exception as error:  # a device that lacks an operation fails in its own way
        first_line = (str(error).splitlines() or [""])[0]
        return f"the step fails on {device} ({type(error).__name__}: {first_line})"
    for name, ours, ref, true in zip(("RoPE", "the bf16 scores", "the softmax"), results, reference, truth):
        tolerance = rounding_tolerance(ref, true, COMPUTE_DTYPE, HEAD_DIM)
        off = largest_difference(ours, true)
        if not off <= tolerance:  # also catches NaN
            return f"{name} on {device} is {off:.3g} from the float64 truth, more than the {tolerance:.3g} allowed"
    return None


def choose_device(device=None) -> str:
    """The device the notebook should use: device (default: the notebook's own default) if it passes the
    self-test, else the CPU. Prints one line saying which, and why."""
    device = str(device or best_device())
    problem = check_device(device)
    if problem is None:
        print(f"OK   device self-test on {device}: RoPE, a bf16 matrix product and the softmax match float64")
        return device
    if torch.device(device).type == "cpu":
        print(f"FAIL device self-test: {problem}. This laptop's torch computes wrongly: reinstall it.")
        return device
    print(f"FAIL device self-test: {problem}. The notebooks will run on the CPU instead (LLAMA3_DEVICE=cpu).")
    return "cpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="the device to test (default: the notebook's: cuda, else mps, else cpu)")
    parser.add_argument("--settings", type=Path, help="write the chosen LLAMA3_DEVICE into this JSON file")
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    if args.settings is not None:
        settings = json.loads(args.settings.read_text()) if args.settings.is_file() else {}
        settings["LLAMA3_DEVICE"] = device
        args.settings.parent.mkdir(parents=True, exist_ok=True)
        args.settings.write_text(json.dumps(settings, indent=1) + "\n")
    return 0 if check_device(device) is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
