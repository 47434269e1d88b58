"""How fast the training notebook's model trains, against Hugging Face's LlamaForCausalLM, side by side.

The model is the notebook's own: the notebook runs (tests/training_runner.py) with the settings given and a
single training step, and one extra cell then times, in that same kernel, one optimizer step of its `model`
(forward, loss, backward, gradient clipping, AdamW) against the same step of a LlamaForCausalLM built with the
same configuration (width, layers, heads, key/value heads, feed-forward width, vocabulary, RMSNorm epsilon,
RoPE base), on the same batch, device and dtype (float32), rounds alternating between the two. It prints the
median milliseconds per step of each and their ratio, and writes them to benchmarks/results/.

--tokenizers also trains the notebook twice at about the same compute, single bytes (windows of 128) against
its byte-pair encoding (windows of 64 tokens, twice the steps), and reports each one's validation loss per
character: the measurement behind the notebook's choice of tokenizer.

Timings mean something only on a quiet machine; on a shared one both sides slow down alike, so compare ratios.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from training_runner import run_training_notebook  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"

# runs in the notebook's kernel after its own cells; TIMINGS_PATH and ROUNDS are filled in
TIME_BOTH_MODELS = """
import statistics
from transformers import LlamaConfig, LlamaForCausalLM

peer_config = LlamaConfig(
    vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=n_layers, num_attention_heads=n_heads,
    num_key_value_heads=n_kv_heads, head_dim=model_args.head_dim, intermediate_size=model_args.ffn_dim, hidden_act="silu",
    rms_norm_eps=params["norm_eps"], rope_theta=params["rope_theta"], max_position_embeddings=block_size,
    tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
peer = LlamaForCausalLM(peer_config).to(device).train()
assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in model.parameters())
peer_optimizer = torch.optim.AdamW(peer.parameters(), lr=peak_lr, betas=TRAINING.betas, weight_decay=TRAINING.weight_decay)
timed_inputs, timed_targets = get_batch("train")


def our_step():
    _, loss = model(timed_inputs, timed_targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), TRAINING.grad_clip)
    optimizer.step()


def peer_step():
    logits = peer(input_ids=timed_inputs).logits
    loss = F.cross_entropy(logits.float().view(-1, vocab_size), timed_targets.reshape(-1))
    peer_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(peer.parameters(), TRAINING.grad_clip)
    peer_optimizer.step()


def timed(step):
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


for _ in range(3):  # warm-up: allocator, optimizer state
    our_step()
    peer_step()
our_seconds, peer_seconds = [], []
for _ in range(ROUNDS):
    our_seconds.append(timed(our_step))
    peer_seconds.append(timed(peer_step))
json.dump({"ours_ms": 1000 * statistics.median(our_seconds), "peer_ms": 1000 * statistics.median(peer_seconds),
           "rounds": ROUNDS, "device": str(device), "threads": torch.get_num_threads(), "parameters": n_parameters,
           "batch": [batch_size, block_size], "params": params, "attention": peer.config._attn_implementation},
          open(TIMINGS_PATH, "w"))
"""

# about the same compute: a byte window of 128 costs about what a 64-token window costs twice (measured: 150 vs 83 ms)
TOKENIZER_RUNS = {
    "bytes": {"LLAMA3_TRAIN_MERGES": "0", "LLAMA3_TRAIN_BLOCK_SIZE": "128", "LLAMA3_TRAIN_STEPS": "450"},
    "bpe-1024": {"LLAMA3_TRAIN_MERGES": "1024", "LLAMA3_TRAIN_BLOCK_SIZE": "64", "LLAMA3_TRAIN_STEPS": "900"},
}


def time_one_step(settings: dict, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="llama3-train-benchmark-") as scratch:
        timings_path = Path(scratch) / "timings.json"
        extra = TIME_BOTH_MODELS.replace("ROUNDS", str(rounds)).replace("TIMINGS_PATH", repr(str(timings_path)))
        run_training_notebook(Path(scratch) / "checkpoint", {**settings, "LLAMA3_TRAIN_STEPS": "1"}, extra)
        timings = json.loads(timings_path.read_text())
    timings["ratio"] = timings["ours_ms"] / timings["peer_ms"]
    return timings


def compare_tokenizers(settings: dict) -> dict:
    results = {}
    for name, run_settings in TOKENIZER_RUNS.items():
        with tempfile.TemporaryDirectory(prefix="llama3-train-tokenizer-") as scratch:
            started = time.perf_counter()
            run_training_notebook(Path(scratch) / "checkpoint", {**settings, **run_settings})
            source = json.loads((Path(scratch) / "checkpoint" / "source.json").read_text())
        results[name] = {"settings": run_settings, "val_nats_per_character": source["losses"]["val_nats_per_character"],
                         "train_seconds": source["train_seconds"], "notebook_seconds": time.perf_counter() - started}
        print(f"{name:>9}: {results[name]['val_nats_per_character']:.3f} nats per character "
              f"after {source['train_seconds']:.0f} s of training ({run_settings})")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="timed steps of each model (default 20)")
    parser.add_argument("--device", help="LLAMA3_DEVICE for the notebook (default: as the notebook chooses)")
    parser.add_argument("--tokenizers", action="store_true", help="also compare bytes with BPE (about 4 minutes)")
    args = parser.parse_args()
    settings = {"LLAMA3_DEVICE": args.device} if args.device else {}

    timings = time_one_step(settings, args.rounds)
    print(f"one optimizer step, batch {timings['batch'][0]} x {timings['batch'][1]}, {timings['parameters']:,} parameters, "
          f"{timings['device']}, float32, {timings['threads']} threads:")
    print(f"  notebook {timings['ours_ms']:.1f} ms, LlamaForCausalLM ({timings['attention']}) {timings['peer_ms']:.1f} ms, "
          f"ratio {timings['ratio']:.2f}")
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "step": timings}
    if args.tokenizers:
        report["tokenizers"] = compare_tokenizers(settings)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{timings['device']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
