"""llama3_support/vocabulary.py holds the rules of the model family once, and they are Meta's.

Against Meta's own code in the llama-models package: the tokenizer's split pattern, its special tokens and
their ids, BOS/EOS and the chat format (ChatFormat); apply_scaling, RoPE's stretch of the slow frequencies;
the FeedForward width. The walkthrough keeps teaching copies of these (it spells them out where it teaches
them); they are imported from the notebook itself (tests/notebook_definitions.py: only the defining statements
run) and held equal to the shared ones. The training notebook and llama3_jax.py import the shared rules and
keep no copies, and a function that shares a name with the walkthrough's takes the same parameters.
"""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from llama3_support import vocabulary
from llama3_support.checkpoint_folder import CheckpointError
from llama3_support.meta_layout import META_LLAMA3_8B_PARAMS_JSON, bundled_tokenizer_path
from notebook_definitions import NotDefined, function_parameters, notebook_definitions
from rounding import assert_within_rounding, rounding_tolerance

REPO = Path(__file__).resolve().parent.parent
WALKTHROUGH = REPO / "llama3_from_scratch.ipynb"
TRAINING_NOTEBOOK = REPO / "train_llama3_from_scratch.ipynb"
JAX_FILE = REPO / "llama3_jax.py"
LLAMA3_N_RANKS, LLAMA3_VOCAB_SIZE = 128000, 128256

# params.json of Meta's models (the 8B's byte for byte; the others' sizes as Meta publishes them), of the training
# notebook's default model and of the SmolLM2 conversion, with the feed-forward width each one's weights have
FFN_WIDTHS = [
    (json.loads(META_LLAMA3_8B_PARAMS_JSON), 14336),
    ({"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3}, 28672),     # Llama 3 70B
    ({"dim": 2048, "multiple_of": 256, "ffn_dim_multiplier": 1.5}, 8192),       # Llama 3.2 1B
    ({"dim": 3072, "multiple_of": 256, "ffn_dim_multiplier": 1.0}, 8192),       # Llama 3.2 3B
    ({"dim": 192, "multiple_of": 32, "ffn_dim_multiplier": 1.0}, 512),          # the training notebook's
    ({"dim": 576, "multiple_of": 256, "ffn_dim_multiplier": 1.0}, 1536),        # SmolLM2-135M
    ({"dim": 256, "multiple_of": 64, "ffn_dim_multiplier": None}, 704),         # no multiplier: Llama 2's rule
]
# a model's name -> its RoPE scale factor (None: use_scaled_rope is off, so no factor applies)
NAMED_FACTORS = [("Llama-3.1-8B", True, 8.0), ("Llama-3.1-8B-Instruct", True, 8.0), ("llama-3.2-1b", True, 32.0),
                 ("Llama-3.2-3B-Instruct", True, 32.0), ("Llama-3.3-70B-Instruct", True, 8.0),
                 ("Meta-Llama-3-8B", False, None), ("anything", False, None)]


def meta_tokenizer():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer(bundled_tokenizer_path())


# ---------------------------------------------------------------- the tokenizer, against Meta's


def test_split_pattern_and_special_tokens_are_metas():
    tokenizer = meta_tokenizer()
    assert vocabulary.LLAMA3_SPLIT_PATTERN == tokenizer.pat_str
    assert vocabulary.N_SPECIAL_TOKENS == tokenizer.num_reserved_special_tokens == 256
    assert len(tokenizer.model._mergeable_ranks) == LLAMA3_N_RANKS and tokenizer.n_words == LLAMA3_VOCAB_SIZE
    special = vocabulary.llama3_special_tokens(LLAMA3_N_RANKS, LLAMA3_VOCAB_SIZE)
    assert special == tokenizer.special_tokens and list(special) == list(tokenizer.special_tokens)  # ids and order
    assert list(special)[:len(vocabulary.NAMED_SPECIAL_TOKENS)] == vocabulary.NAMED_SPECIAL_TOKENS
    assert list(special)[len(vocabulary.NAMED_SPECIAL_TOKENS)] == vocabulary.reserved_special_token(0)
    assert list(special)[-1] == "<|reserved_special_token_245|>"  # 244 reserved ones, numbered from 2


def test_llama3_rules_give_metas_bos_eos_and_stop_where_metas_tokenizer_stops():
    tokenizer = meta_tokenizer()
    rules = vocabulary.llama3_tokenizer_rules(LLAMA3_N_RANKS, LLAMA3_VOCAB_SIZE)
    assert (rules.bos_id, rules.eos_id, rules.add_bos) == (tokenizer.bos_id, tokenizer.eos_id, True)
    # the end of a text, of a message that calls a tool (<|eom_id|>), of a chat turn: Meta's stop set exactly
    assert rules.stop_ids == set(tokenizer.stop_tokens) == {tokenizer.eos_id, tokenizer.eom_id, tokenizer.eot_id}
    assert [rules.special_tokens[name] for name in vocabulary.LLAMA3_STOP_TOKENS] == tokenizer.stop_tokens
    assert rules.chat_format == vocabulary.LLAMA3_CHAT


def test_a_folder_without_tokenizer_config_has_llama3s_rules(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(bundled_tokenizer_path().read_bytes())
    assert vocabulary.tokenizer_rules(tmp_path) == vocabulary.llama3_tokenizer_rules(LLAMA3_N_RANKS, LLAMA3_VOCAB_SIZE)
    # the training notebook's: 1280 ranks, then 256 special tokens
    assert vocabulary.tokenizer_rules(tmp_path, 1536, n_ranks=1280).special_tokens["<|begin_of_text|>"] == 1280


def test_llama3_chat_prompt_is_metas_chat_format():
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat

    tokenizer = meta_tokenizer()
    rules = vocabulary.llama3_tokenizer_rules(LLAMA3_N_RANKS, LLAMA3_VOCAB_SIZE)
    message = "  What is the capital of Japan? <|eot_id|>\n"
    # the message is stripped first, as the walkthrough does; then every token is the one Meta's ChatFormat writes
    meta = ChatFormat(tokenizer).encode_dialog_prompt([RawMessage(role="user", content=message.strip())]).tokens
    assert vocabulary.chat_prompt_ids(rules, tokenizer.model, message) == meta


SMOLLM2_STYLE_CONFIG = {  # the keys llama3_support/smollm2_checkpoint.py writes, a vocabulary of 300 ids
    "pattern": r"\p{N}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "special_tokens": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, "bos_id": 1, "eos_id": 2,
    "pad_id": 2, "add_bos": False, "bytes_without_token": [4, 255], "chat_format": "chatml",
    "default_system_message": "You are a helpful assistant", "chat_template": "(Jinja)",
}


def test_a_folder_with_tokenizer_config_brings_its_own_rules_and_chatml(tmp_path):
    import tiktoken

    (tmp_path / vocabulary.TOKENIZER_CONFIG).write_text(json.dumps(SMOLLM2_STYLE_CONFIG))
    rules = vocabulary.tokenizer_rules(tmp_path)
    assert rules.split_pattern == SMOLLM2_STYLE_CONFIG["pattern"]
    assert rules.special_tokens == SMOLLM2_STYLE_CONFIG["special_tokens"]
    assert (rules.bos_id, rules.add_bos, rules.eos_id) == (1, False, 2)
    assert rules.stop_ids == {2, 0}  # the end of a turn, <|im_end|>, and of a document, <|endoftext|>
    assert rules.chat_format == vocabulary.CHATML and rules.bytes_without_token == {4, 255}
    ranks = {bytes([byte]): 3 + byte for byte in range(256)}  # the bytes after the 3 special tokens' ids
    encoding = tiktoken.Encoding(name="test", pat_str=rules.split_pattern, mergeable_ranks=ranks,
                                 special_tokens=rules.special_tokens)
    message = "Hi <|im_end|>"  # looks like a special token: stays text
    expected = ("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n"
                f"{message}<|im_end|>\n<|im_start|>assistant\n")
    ids = vocabulary.chat_prompt_ids(rules, encoding, message)
    assert encoding.decode(ids) == expected
    assert ids.count(2) == 2 and ids.count(1) == 3  # only the template's own special tokens are special
    (tmp_path / vocabulary.TOKENIZER_CONFIG).write_text("{}")
    with pytest.raises(CheckpointError, match="build the folder again"):
        vocabulary.tokenizer_rules(tmp_path)


# ---------------------------------------------------------------- the shape, against Meta's


@pytest.mark.parametrize("params, width", FFN_WIDTHS)
def test_ffn_hidden_dim_is_metas_feedforward_width(params, width):
    from llama_models.llama3.model import FeedForward

    from reference import ensure_model_parallel_group

    ensure_model_parallel_group()
    meta = FeedForward(dim=params["dim"], hidden_dim=4 * params["dim"], multiple_of=params["multiple_of"],
                       ffn_dim_multiplier=params["ffn_dim_multiplier"])  # torch.empty weights: no memory touched
    assert vocabulary.ffn_hidden_dim(params) == meta.w1.weight.shape[0] == width


def test_params_checks_refuse_odd_head_widths_and_uneven_groups():
    assert vocabulary.params_problems(json.loads(META_LLAMA3_8B_PARAMS_JSON)) == []
    eight_b = json.loads(META_LLAMA3_8B_PARAMS_JSON)
    for change, problem in [({"dim": 4064}, "heads of an even width"),    # 32 heads of 127: RoPE needs pairs
                            ({"n_kv_heads": 5}, "evenly into key/value heads"),
                            ({"n_layers": 0}, "n_layers is 0"), ({"use_scaled_rope": 1}, "true or false"),
                            ({"vision_chunk_size": 560}, "another kind of model")]:
        assert problem in "; ".join(vocabulary.params_problems(eight_b | change)), change
    assert "dim is missing" in vocabulary.params_problems({k: v for k, v in eight_b.items() if k != "dim"})
    assert vocabulary.head_split_problem(192, 6, 2) is None and vocabulary.head_split_problem(90, 6, 2)


# ---------------------------------------------------------------- RoPE scaling, against Meta's


def base_frequencies(dtype: torch.dtype) -> torch.Tensor:
    """Llama 3.1 8B's RoPE frequencies (head_dim 128, rope_theta 500000), as Meta's precompute_freqs_cis makes them."""
    return 1.0 / (500000.0 ** (torch.arange(0, 128, 2).to(dtype) / 128))


def meta_apply_scaling(scale_factor: float):
    """Meta's apply_scaling from llama_models/llama3/model.py, with its hard-coded factor of 8 set to scale_factor
    (Llama 3.2 uses 32) and nothing else changed."""
    from llama_models.llama3 import model as meta_model

    source = inspect.getsource(meta_model.apply_scaling)
    assert source.count("scale_factor = 8\n") == 1
    namespace = {"torch": torch}
    exec(source.replace("scale_factor = 8\n", f"scale_factor = {scale_factor!r}\n"), namespace)
    return namespace["apply_scaling"]


@pytest.mark.parametrize("scale_factor", [8.0, 32.0])
def test_scale_rope_frequencies_is_metas_apply_scaling(scale_factor):
    truth = meta_apply_scaling(scale_factor)(base_frequencies(torch.float64))
    meta = meta_apply_scaling(scale_factor)(base_frequencies(torch.float32))
    tolerance = rounding_tolerance(meta, truth, torch.float32, terms=1)
    ours = torch.from_numpy(vocabulary.scale_rope_frequencies(base_frequencies(torch.float32).numpy(), scale_factor))
    assert ours.dtype == torch.float32
    assert_within_rounding(ours, truth, tolerance, f"vocabulary float32 - Meta float64, factor {scale_factor:g}")
    # the rule moves the slow pairs by the whole factor: nowhere near a rounding error
    assert (truth[-1] * scale_factor - base_frequencies(torch.float64)[-1]).abs() < tolerance
    assert (truth - base_frequencies(torch.float64)).abs().max() > 1000 * tolerance


@pytest.mark.parametrize("model_name, use_scaled_rope, factor", NAMED_FACTORS)
def test_rope_scale_factor_follows_the_models_name(model_name, use_scaled_rope, factor):
    assert vocabulary.rope_scale_factor_for({"use_scaled_rope": use_scaled_rope}, model_name)[0] == factor


def test_an_unnamed_scaled_model_is_refused_with_both_ways_to_give_the_factor():
    with pytest.raises(CheckpointError) as error:
        vocabulary.rope_scale_factor_for({"use_scaled_rope": True}, "my-finetune")
    assert "LLAMA3_ROPE_SCALE_FACTOR=8" in str(error.value) and "--rope-scale-factor 8 or 32" in str(error.value)


def test_the_models_name_is_the_folders_own_and_its_parents_only_for_original(tmp_path):
    hub = tmp_path / "meta-llama" / "Llama-3.1-8B" / "original"
    mine = tmp_path / "Llama-3.2-experiments" / "my-finetune"
    assert vocabulary.model_name_for(hub, {}) == "Llama-3.1-8B"
    assert vocabulary.model_name_for(mine, {}) == "my-finetune"  # not the 3.2 of the folder it sits in
    assert vocabulary.model_name_for(mine, {"repo_id": "meta-llama/Llama-3.1-8B-Instruct"}) == "Llama-3.1-8B-Instruct"
    assert vocabulary.model_name_for(mine, {"model": "Llama-3.2-1B", "repo_id": "x/y"}) == "Llama-3.2-1B"


# ---------------------------------------------------------------- the walkthrough's teaching copies


def walkthrough_definitions(*names, **given) -> dict:
    try:
        return notebook_definitions(WALKTHROUGH, names, given)
    except NotDefined as missing:
        pytest.skip(f"{WALKTHROUGH.name} defines no {missing.name} in its cells now (it may have moved into a "
                    "module, or been renamed): there is no teaching copy of it to hold equal to vocabulary.py's")


@pytest.mark.parametrize("name", ["LLAMA3_SPLIT_PATTERN", "NAMED_SPECIAL_TOKENS", "LLAMA3_STOP_TOKENS", "ORIGINAL_CONTEXT",
                                  "LOW_FREQ_FACTOR", "HIGH_FREQ_FACTOR"])
def test_walkthrough_constant_equals_the_shared_one(name):
    assert walkthrough_definitions(name)[name] == getattr(vocabulary, name)


@pytest.mark.parametrize("scale_factor", [8.0, 32.0])
def test_walkthrough_scale_rope_frequencies_is_the_shared_rule(scale_factor):
    scale = walkthrough_definitions("scale_rope_frequencies", "ORIGINAL_CONTEXT", "LOW_FREQ_FACTOR",
                                    "HIGH_FREQ_FACTOR")["scale_rope_frequencies"]
    truth = meta_apply_scaling(scale_factor)(base_frequencies(torch.float64))
    tolerance = rounding_tolerance(meta_apply_scaling(scale_factor)(base_frequencies(torch.float32)), truth,
                                   torch.float32, terms=1)
    assert_within_rounding(scale(base_frequencies(torch.float32), scale_factor), truth, tolerance,
                           f"walkthrough float32 - Meta float64, factor {scale_factor:g}")


@pytest.mark.parametrize("params, width", FFN_WIDTHS)
def test_walkthrough_ffn_dim_is_the_shared_width(params, width):
    assert walkthrough_definitions("ffn_dim", params=params, dim=params["dim"])["ffn_dim"] == width


# ---------------------------------------------------------------- no copies, and the same names mean the same


def sources_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        import nbformat

        return "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    return path.read_text()


@pytest.mark.parametrize("path", [TRAINING_NOTEBOOK, JAX_FILE], ids=lambda path: path.name)
def test_the_training_notebook_and_jax_keep_no_copy_of_the_shared_rules(path):
    source = sources_of(path)
    copies = {"the split pattern": r"\p{N}{1,3}", "the special tokens' names": "<|finetune_right_pad_id|>",
              "the reserved tokens' naming": "reserved_special_token_{", "the feed-forward width": "2 * 4 *",
              "RoPE scaling's constants": "LOW_FREQ_FACTOR", "the model-name rule": "ROPE_SCALE_FACTORS",
              "the training defaults": "1337"}
    assert [what for what, text in copies.items() if text in source] == []


def test_functions_named_as_the_walkthroughs_take_its_parameters():
    walkthrough = function_parameters(WALKTHROUGH)
    assert walkthrough.get("generate", ["prompt_tokens", "max_new_tokens"]) == ["prompt_tokens", "max_new_tokens"]
    for path in (TRAINING_NOTEBOOK, JAX_FILE):
        ours = function_parameters(path)
        shared = {name: (ours[name], walkthrough[name]) for name in set(ours) & set(walkthrough)
                  if name not in ("__init__", "forward")}
        assert {name: pair for name, pair in shared.items() if pair[0] != pair[1]} == {}, path.name
        assert "generate" not in ours  # the walkthrough's returns new token ids: theirs are other things, named so
    training = function_parameters(TRAINING_NOTEBOOK)
    assert training["apply_rope"] == ["x", "rotations"] and training["rope_rotations_for"] == ["positions"]


def test_the_shared_training_defaults_are_the_notebooks_documented_ones():
    documented = {"steps": 3000, "seed": 1337, "merges": 1024, "dim": 192, "layers": 4, "heads": 6, "kv_heads": 2,
                  "batch_size": 16, "block_size": 64, "lr": 0.002, "eval_interval": 250, "eval_iters": 20}
    assert {name: getattr(vocabulary.TRAINING, name) for name in vocabulary.TRAINING_SETTINGS} == documented
    intro = TRAINING_NOTEBOOK.read_text()
    assert all(f"`{value}`" in intro for value in documented.values())  # the settings table shows each default
    params = vocabulary.training_params(documented, 1536)
    assert vocabulary.ffn_hidden_dim(params) == 512 and vocabulary.params_problems(params) == []
    assert math.isclose(params["rope_theta"], 10000.0) and params["use_scaled_rope"] is False


@pytest.mark.parametrize("name", ["N_SPECIAL_TOKENS", "PARAM_TYPES", "OPTIONAL_PARAMS", "TYPE_NAMES", "TOKENIZER_CONFIG",
                                  "ORIGINAL_CONTEXT", "fits_type", "head_split_problem", "model_name_for"])
def test_the_walkthroughs_checks_take_the_shared_rules_and_keep_no_copies(name):
    """llama3_support/checkpoint_check.py (the walkthrough's folder checks) imports each rule from vocabulary.py."""
    from llama3_support import checkpoint_check

    assert getattr(checkpoint_check, name) is getattr(vocabulary, name)
    assert not hasattr(checkpoint_check, "ROPE_SCALE_FACTORS") and not hasattr(checkpoint_check, "rope_scale_factor_for")
