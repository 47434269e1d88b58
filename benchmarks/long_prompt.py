"""Peak memory of the whole notebook on a prompt that fills Llama 3's context, at the 8B's width.

    python benchmarks/long_prompt.py                        # 8192 tokens, the 8B's shapes with 4 layers
    python benchmarks/long_prompt.py --tokens 2048 --layers 2

The checkpoint has Meta-Llama-3-8B's params.json (4096 wide, 32 query heads, 8 key/value heads, the
14336-wide feed-forward network, the full vocabulary) except for its number of layers, and seeded random
weights; it is built once into checkpoints/ (about 1 GB per layer on top of 2 GB of embedding and output).
The prompt is "hello" repeated to the given number of tokens, <|begin_of_text|> included. The notebook runs
in a fresh Jupyter kernel, as a user runs it, while a thread samples the kernel's anonymous memory (RssAnon:
what it owns, not the mapped checkpoint's file pages).

More layers add only their key/value cache to the peak, since the weights stay mapped on disk and the loop
keeps one layer's activations at a time: the last line derives that for the 8B's 32 layers.
"""

import argparse
import json
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from benchmark import GiB, REPO, MemorySampler, gib  # noqa: E402  (also puts tests/ on the path)
from checkpoints import write_checkpoint  # noqa: E402
from llama3_support.meta_layout import META_LLAMA3_8B_PARAMS_JSON  # noqa: E402
from notebook_runner import run_notebook  # noqa: E402

META_LLAMA3_8B = json.loads(META_LLAMA3_8B_PARAMS_JSON)


def long_prompt_checkpoint(n_layers: int) -> Path:
    folder = REPO / "checkpoints" / f"long-prompt-8b-shapes-{n_layers}-layers"
    if not (folder / "source.json").is_file():
        print(f"building {folder} (once)")
        write_checkpoint(folder, {**META_LLAMA3_8B, "n_layers": n_layers}, seed=0, model=f"8B shapes, {n_layers} layers")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length with <|begin_of_text|> (default: 8192)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the checkpoint (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=2, help="LLAMA3_MAX_NEW_TOKENS (default: 2)")
    args = parser.parse_args(argv)
    if args.tokens < 3 or args.layers < 1 or args.max_new_tokens < 0:
        parser.error("--tokens must be at least 3, --layers at least 1, --max-new-tokens 0 or more")

    checkpoint = long_prompt_checkpoint(args.layers)
    prompt = "hello " * (args.tokens - 2)  # "hello", then " hello" each, the last space, and <|begin_of_text|>
    sampler = MemorySampler(0.01)
    started = time.perf_counter()
    try:
        results = run_notebook(checkpoint, prompt, names=("n_tokens", "n_kv_heads", "head_dim", "generated_tokens"),
                               timeout=3600, on_kernel_start=sampler.start, max_new_tokens=args.max_new_tokens)
    finally:
        sampler.stop()
    seconds = time.perf_counter() - started
    peak_anon = sampler.peak("RssAnon")

    positions = results["n_tokens"] + len(results["generated_tokens"])
    cache_bytes_per_layer = 2 * positions * results["n_kv_heads"] * results["head_dim"] * 2  # keys and values, bf16
    added_layers = META_LLAMA3_8B["n_layers"] - args.layers
    summary = {"prompt_tokens": results["n_tokens"], "layers": args.layers, "notebook_seconds": round(seconds, 1),
               "peak_anon_gib": round(peak_anon / GiB, 3), "peak_rss_gib": round(sampler.peak("VmHWM") / GiB, 3),
               "cache_gib_per_layer": round(cache_bytes_per_layer / GiB, 4),
               "derived_peak_anon_gib_for_32_layers": round((peak_anon + added_layers * cache_bytes_per_layer) / GiB, 3)}
    print(json.dumps(summary, indent=2))
    print(f"{results['n_tokens']}-token prompt, {args.layers} layers of the 8B's shapes: whole notebook in {seconds:.0f} s, "
          f"peak anonymous memory {gib(peak_anon)} GiB; the 8B's other {added_layers} layers would add their "
          f"key/value cache, {gib(added_layers * cache_bytes_per_layer)} GiB, for about "
          f"{gib(peak_anon + added_layers * cache_bytes_per_layer)} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
