"""Tokenizers: round trips, offsets, special ids, chat formats, loading errors."""
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlr.data import synthetic
from rlr.data.tokenizer import (
    CHAR_ALPHABET,
    QWEN_SYSTEM_PROMPT,
    CharTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    format_chat,
    load_tokenizer,
    train_sentencepiece,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Solve for x: $\\frac{x^2}{4} + \\sqrt{2}x = \\int_0^1 t\\,dt$.",
    "Café, naïve, 数学, and emoji 🎉 are all text.",
    "Indented:\n    four spaces\n\ttab\n\n\nthree newlines",
]
HARD_TEXTS = [
    "  leading and   inner  runs   of spaces  ",
    "tabs\t\tand\r\nwindows line ends\n\n",
    "\\begin{align} a &= b^{2} \\\\ c &\\le \\frac{1}{2} \\end{align}",
    "unseen unicode: Ωμέγα, Ж, ひらがな, 한국어, 🧮🤖, \u00a0nbsp",
    "",
    "\n",
]


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
    texts = [p.prompt + p.solution for p in synthetic.generate_problems(0, 2000)] + SENTENCES * 20
    start = time.perf_counter()
    tok = train_sentencepiece(texts, vocab_size=400, model_prefix=tmp_path_factory.mktemp("spm") / "spm")
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"SentencePiece training took {elapsed:.1f} s"
    return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Qwen-style tokenizer.json: byte-level BPE with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 10, trainer=trainer)
    path = tmp_path_factory.mktemp("hf")
    tok.save(str(path / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(hf_dir):
    return load_tokenizer(hf_dir)


def _check_offsets(tok, ids):
    text, ends = tok.decode_with_offsets(ids)
    assert text == tok.decode(ids)
    assert len(ends) == len(ids)
    assert all(a <= b for a, b in zip(ends, ends[1:]))
    if ids:
        assert ends[-1] == len(text)
    for i in range(len(ids)):  # a prefix decodes to the text up to its last token's end
        prefix = tok.decode(ids[: i + 1])
        assert prefix.startswith(text[: ends[i]])
        if "\ufffd" not in prefix:
            assert prefix == text[: ends[i]]


@pytest.mark.parametrize("text", SENTENCES + HARD_TEXTS)
def test_round_trips(spm_tokenizer, hf_tokenizer, text):
    for tok in (spm_tokenizer, hf_tokenizer):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        _check_offsets(tok, ids)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_any_text(spm_tokenizer, hf_tokenizer, text):
    for tok in (spm_tokenizer, hf_tokenizer):
        assert tok.decode(tok.encode(text)) == text


def test_byte_fallback_offsets_hand_checked(spm_tokenizer):
    ids = spm_tokenizer.encode("añ")  # ñ was never seen: two byte tokens <0xC3> <0xB1>
    assert [spm_tokenizer._sp.id_to_piece(i) for i in ids] == ["a", "<0xC3>", "<0xB1>"]
    assert spm_tokenizer.decode_with_offsets(ids) == ("añ", [1, 1, 2])
    text, ends = spm_tokenizer.decode_with_offsets(ids[:2])  # a truncated character
    assert (text, ends) == ("a\ufffd", [1, 2])


def test_special_ids(spm_tokenizer, hf_tokenizer):
    assert (spm_tokenizer.pad_id, spm_tokenizer.bos_id, spm_tokenizer.eos_id) == (0, 2, 3)
    assert spm_tokenizer.decode([2, *spm_tokenizer.encode("hi"), 3, 0]) == "hi"
    assert spm_tokenizer.vocab_size <= 400
    vocab = hf_tokenizer._tok.get_vocab()
    assert hf_tokenizer.eos_id == vocab["<|im_end|>"]
    assert hf_tokenizer.pad_id == vocab["<|endoftext|>"]
    assert hf_tokenizer.bos_id is None
    # special tokens in text become one id each and decode back to their text
    ids = hf_tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == vocab["<|im_start|>"] and ids[-1] == vocab["<|im_end|>"]
    assert hf_tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>"


def test_chatml_exact(hf_tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    expected = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert hf_tokenizer.chat_format == "chatml"
    assert hf_tokenizer.apply_chat_template(messages) == expected
    assert hf_tokenizer.encode_chat(messages) == hf_tokenizer.encode(expected)
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    assert hf_tokenizer.apply_chat_template(chat, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    qwen2 = HFTokenizer.from_file(
        hf_tokenizer.path, system_prompt="You are a helpful assistant."
    ).apply_chat_template(messages)
    assert qwen2.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert QWEN_SYSTEM_PROMPT in expected


def test_llama3_and_plain_formats():
    messages = [{"role": "user", "content": " Hi \n"}]
    assert format_chat(messages, "llama3") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert format_chat([{"role": "user", "content": "1+2"}], "plain") == "1+2\n"
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        format_chat([{"role": "robot", "content": "x"}], "chatml")
    with pytest.raises(ValueError, match="chat_format"):
        format_chat(messages, "jinja")


def test_char_tokenizer():
    tok = CharTokenizer()
    assert tok.vocab_size < 64
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "((3+4)*2)-5\n3+4=7\nanswer: -9"
    ids = tok.encode(text)
    assert len(ids) == len(text) and min(ids) >= 3
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text
    assert tok.decode_with_offsets(ids) == (text, list(range(1, len(text) + 1)))
    assert tok.apply_chat_template([{"role": "user", "content": "1+2"}]) == "1+2\n"
    assert load_tokenizer("char").encode("3") == ids[2:3]
    with pytest.raises(ValueError, match=r"'#' at position 1"):
        tok.encode("1#2")


def test_fingerprint_tells_tokenizers_apart(spm_tokenizer, hf_dir, hf_tokenizer):
    """Tokenizer.fingerprint: one value a tokenizer (reloaded, or with another system prompt:
    the chat is text around the ids), another for each other tokenizer; the character
    tokenizer's is the digest of its ids and alphabet, computed here by hand."""
    import hashlib

    char = CharTokenizer()
    by_hand = hashlib.sha256(json.dumps([51, 1, 2, 0, CHAR_ALPHABET]).encode()).hexdigest()[:16]
    assert char.fingerprint() == by_hand
    prints = [t.fingerprint() for t in (char, CharTokenizer(CHAR_ALPHABET + "#"), spm_tokenizer,
                                         hf_tokenizer)]
    assert len(set(prints)) == 4 and all(len(p) == 16 for p in prints)
    assert load_tokenizer(hf_dir).fingerprint() == hf_tokenizer.fingerprint()
    assert load_tokenizer(hf_dir, system_prompt="Be brief.").fingerprint() == hf_tokenizer.fingerprint()


def test_load_errors(tmp_path, spm_tokenizer, hf_dir):
    assert isinstance(load_tokenizer(spm_tokenizer.path), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(hf_dir / "tokenizer.json"), HFTokenizer)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="vocab.txt: unknown kind of file"):
        load_tokenizer(tmp_path / "vocab.txt")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    with pytest.raises(FileNotFoundError, match="tokenizer_config"):
        load_tokenizer(bare)
    with pytest.raises(ValueError, match="eos_token"):
        HFTokenizer.from_file(bare / "tokenizer.json", tokenizer_config={"pad_token": "<|endoftext|>"})
    with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
        HFTokenizer.from_file(bare / "tokenizer.json", tokenizer_config={"eos_token": "<nope>"})
