"""Before a workshop: one OK or FAIL line per requirement, so that a room finds its problems before the first exercise.

    python -m llama3_support.preflight [--checkpoint checkpoints/SmolLM2-135M-Instruct]

The exercise notebook's first cell calls preflight() too.
"""

import argparse
import sys

MIN_PYTHON = (3, 10)


def preflight(checkpoint_dir=None) -> bool:
    """Print one line per requirement; True when every one is met."""
    ok = sys.version_info >= MIN_PYTHON
    print(f"{'OK  ' if ok else 'FAIL'} Python {sys.version.split()[0]} (needs {'.'.join(map(str, MIN_PYTHON))} or newer)")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the checkpoint folder the room will use")
    args = parser.parse_args(argv)
    return 0 if preflight(args.checkpoint) else 1


if __name__ == "__main__":
    sys.exit(main())
