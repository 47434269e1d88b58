"""The notebook's tokenizer is Meta's: same ids, same special tokens, same BOS handling, lossless decoding.

The oracle is llama_models.llama3.tokenizer.Tokenizer on the same tokenizer.model. The notebook's side is
computed in its own kernel: one run with the whole corpus as LLAMA3_PROMPT (so the prompt ids come from the
notebook's own prompt cell) and one extra cell that encodes and decodes each text with the notebook's
`tokenizer` as its prompt cell calls it, ordinary text only (special-token look-alikes stay text).
"""

import json

import pytest

from fidelity_cases import checkpoint_folder, meta_tokenizer
from notebook_runner import run_notebook

CORPUS = [
    # English prose, with contractions in both cases (the split pattern matches 's 't 're 've 'm 'll 'd)
    "It was the best of times, it was the worst of times; we'd all been told we'll know when it's over.",
    "I'M SURE THEY'VE SAID YOU'RE WRONG, BUT HE'D DISAGREE AND SHE'LL NOT.",
    # code, with indentation, tabs, CRLF line ends, braces and operators
    "def rms_norm(x, eps=1e-5):\n    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)\n",
    "for (int i = 0; i < n; ++i) {\r\n\tsum += a[i] * b[i];\r\n}\r\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name HAVING COUNT(*) > 1;",
    '{"key": [1, 2.5, -3e10, null, true], "nested": {"a": "b\\n"}}',
    # whitespace runs: spaces, tabs, newlines, trailing and leading, a non-breaking space and an ideographic one
    "   leading spaces", "trailing spaces    ", "a  b   c    d     e", "\t\ttabs\tand\t\ttabs\t",
    "\n\n\nnewlines\n\n", " \n \n \t ", "non\u00a0breaking\u3000space", "",
    # digits: the split pattern cuts numbers into runs of at most three
    "0", "12", "123", "1234", "12345678901234567890", "3.14159265358979", "1,000,000 and 1_000_000",
    "2024-04-18T12:34:56Z", "+1 (555) 012-3456", "١٢٣ ٤٥٦ and ௧௨௩",
    # many scripts
    "Größe, naïve café, façade, Ærøskøbing, Łódź, İstanbul",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "השועל החום המהיר קופץ מעל הכלב העצלן",
    "نص عربي للتجربة مع أرقام ١٢٣",
    "हिन्दी में एक वाक्य, और कुछ अंक १२३",
    "東京は日本の首都です。漢字とひらがなとカタカナ。",
    "中文测试：快速的棕色狐狸跳过了懒狗。",
    "한국어 문장을 토큰으로 나눕니다.",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "ქართული ენა, Հայերեն լեզու, አማርኛ",
    # emoji, including sequences joined by zero-width joiners, flags and skin tones
    "🦙🚀🔥 emoji", "👩‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "👍🏽👋🏿", "∑ x² ≠ ∞, ½ ≤ ¾ → ⊥",
    # combining marks, control characters, mixed
    "e\u0301 (e + combining acute) vs \u00e9", "zero\u200bwidth\u200bspace", "bell\x07 and escape\x1b[0m",
    # special-token look-alikes: ordinary text, never special tokens
    "<|begin_of_text|>", "<|eot_id|><|start_header_id|>user<|end_header_id|>",
    "<|reserved_special_token_250|> <|image|> <|python_tag|>", "<| eot_id |> <|eot_id", "|>><<|",
]
CORPUS_CELL = f"""\
import json
corpus = json.loads({json.dumps(CORPUS)!r})
corpus_ids = [tokenizer.encode(text, allowed_special=set(), disallowed_special=()) for text in corpus]
corpus_decoded = [tokenizer.decode(ids) for ids in corpus_ids]
"""
PROMPT = "\n\n".join(CORPUS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return checkpoint_folder(tmp_path_factory, "gqa4-hd32")


@pytest.fixture(scope="module")
def notebook(folder):
    return run_notebook(folder, PROMPT, extra_cells=[CORPUS_CELL], max_new_tokens=1,
                        names=("tokens", "corpus_ids", "corpus_decoded", "special_tokens", "bos_id", "eos_id",
                               "eot_id"))


@pytest.fixture(scope="module")
def meta(folder):
    return meta_tokenizer(folder / "tokenizer.model")


def test_each_text_gets_metas_ids(notebook, meta):
    expected = [meta.encode(text, bos=False, eos=False) for text in CORPUS]
    mismatches = [(text, ours, theirs) for text, ours, theirs in zip(CORPUS, notebook["corpus_ids"], expected)
                  if ours != theirs]
    assert mismatches == []
    assert sum(len(ids) for ids in expected) > 600  # the corpus is not trivially short


def test_prompt_of_the_whole_corpus_is_bos_then_metas_ids(notebook, meta):
    assert notebook["tokens"].tolist() == meta.encode(PROMPT, bos=True, eos=False)


def test_decoding_gives_back_each_text(notebook, meta):
    assert notebook["corpus_decoded"] == CORPUS
    assert [meta.decode(ids) for ids in notebook["corpus_ids"]] == CORPUS


def test_look_alikes_of_special_tokens_stay_text(notebook, meta):
    special_ids = set(meta.special_tokens.values())
    assert not any(set(ids) & special_ids for ids in notebook["corpus_ids"])
    assert notebook["tokens"].tolist().count(meta.bos_id) == 1


def test_special_tokens_are_metas(notebook, meta):
    assert notebook["special_tokens"] == meta.special_tokens
    assert len(notebook["special_tokens"]) == 256
    assert (notebook["bos_id"], notebook["eos_id"], notebook["eot_id"]) == (meta.bos_id, meta.eos_id, meta.eot_id)
    assert (notebook["bos_id"], notebook["eos_id"], notebook["eot_id"]) == (128000, 128001, 128009)
