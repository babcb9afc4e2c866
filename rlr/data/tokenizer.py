"""Tokenizers behind one interface: SentencePiece, Hugging Face tokenizer.json, characters.

Every tokenizer maps text to ids and back, names its special ids (bos may be None, eos,
pad) and formats a chat (a list of {"role", "content"} messages) into the prompt text
its model was trained on:

- "chatml": Qwen2 / Qwen2.5 instruct models (ChatML, Qwen2.5's default system prompt),
- "llama3": Llama 3 instruct models,
- "plain":  the message contents, each followed by a newline (the synthetic task).

`encode` never adds special tokens by itself (a chat template writes them as text, and
tokenizer.json special tokens in text are parsed to their ids); prepend `bos_id` where
a model wants one. `decode_with_offsets` gives, for every token, where it ends in the
decoded text, so reasoning steps (character spans) can be mapped to the tokens that
end them.
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

CHAT_FORMATS = ("chatml", "llama3", "plain")
CHAT_ROLES = ("system", "user", "assistant")
# Qwen2.5-Instruct's chat template inserts this system message when none is given.
QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA3_BOS = "<|begin_of_text|>"

Message = Mapping[str, str]
# What Tokenizer.fingerprint encodes: words, numbers and arithmetic as math and dialogue data
# have them.
FINGERPRINT_PROBE = ("Natalia sold clips to 48 of her friends in April, and then she sold half as "
                     "many clips in May.\nHow many clips did Natalia sell altogether in April and "
                     "May? 48 / 2 = 24; 48 + 24 = 72.\n#### 72")


def _check_messages(messages: Sequence[Message]) -> None:
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise ValueError(
                f"messages[{i}] = {message!r}: expected a dict with 'role' in {CHAT_ROLES} "
                "and a string 'content'"
            )


def format_chat(
    messages: Sequence[Message],
    chat_format: str,
    add_generation_prompt: bool = True,
    system_prompt: str | None = None,
) -> str:
    """Formats a chat into a model's prompt text, in Python (no jinja).

    system_prompt, when not None, is inserted as the first message unless the chat
    already starts with a system message.
    - chatml (Qwen2/Qwen2.5 chat template): every message is
      "<|im_start|>{role}\\n{content}<|im_end|>\\n"; the generation prompt is
      "<|im_start|>assistant\\n".
    - llama3 (Meta Llama 3 chat template): "<|begin_of_text|>", then every message is
      "<|start_header_id|>{role}<|end_header_id|>\\n\\n{content.strip()}<|eot_id|>"; the
      generation prompt is "<|start_header_id|>assistant<|end_header_id|>\\n\\n".
    - plain: "{content}\\n" for every message, roles dropped; no generation prompt.
    """
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"chat_format={chat_format!r}: expected one of {CHAT_FORMATS}")
    _check_messages(messages)
    messages = list(messages)
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    if chat_format == "chatml":
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    if chat_format == "llama3":
        text = LLAMA3_BOS + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
            for m in messages
        )
        return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")
    return "".join(m["content"] + "\n" for m in messages)


class Tokenizer(abc.ABC):
    """Text <-> token ids, special ids, and the chat format of one model.

    Attributes: vocab_size, bos_id (None when the model has no bos), eos_id, pad_id,
    chat_format (one of CHAT_FORMATS), system_prompt (inserted when a chat has none).
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    chat_format: str
    system_prompt: str | None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text; no bos / eos is added."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of ids (bytes that do not form UTF-8 become U+FFFD)."""

    def decode_with_offsets(self, ids: Sequence[int]) -> tuple[str, list[int]]:
        """Returns (decode(ids), char_ends): char_ends[i] = end offset in the text of token i.

        Decodes incrementally (as streaming generation servers do): the text of token i is
        decode(ids[p:i+1]) minus decode(ids[p:r]) over a short window p <= r <= i, so
        decoders that depend on context (a stripped leading space) stay exact. A character
        made of several tokens (UTF-8 bytes split over byte-level or byte-fallback tokens)
        ends at the token that completes it; earlier tokens end where it starts, so
        char_ends is non-decreasing and text[char_ends[i-1]:char_ends[i]] is token i's text.
        """
        ids = [int(i) for i in ids]
        text, char_ends = "", []
        prefix, read = 0, 0
        for i in range(len(ids)):
            prefix_text = self.decode(ids[prefix:read])
            new_text = self.decode(ids[prefix : i + 1])
            if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
                text += new_text[len(prefix_text) :]
                prefix, read = read, i + 1
            char_ends.append(len(text))
        full = self.decode(ids)
        if not full.startswith(text):
            raise ValueError(
                f"{type(self).__name__}.decode_with_offsets: incremental decoding gave {text!r}, "
                f"which is not a prefix of decode(ids) = {full!r}; this tokenizer's decoder is "
                "not prefix-stable"
            )
        if char_ends:  # bytes left undecoded at the end belong to the last token
            char_ends[-1] = len(full)
        return full, char_ends

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat in this tokenizer's chat_format (see format_chat)."""
        return format_chat(messages, self.chat_format, add_generation_prompt, self.system_prompt)

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """encode(apply_chat_template(messages, add_generation_prompt))."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))

    def fingerprint(self) -> str:
        """A digest of the ids this tokenizer gives (`_digest` of its vocabulary size, bos / eos /
        pad ids and the ids of FINGERPRINT_PROBE). Tokenizers of different families differ in
        it; the chat format does not enter (it is text around the ids). An export records it,
        so that a model is not read with another tokenizer's ids
        (rlr.train.params_io.load_params)."""
        return _digest(self.vocab_size, self.bos_id, self.eos_id, self.pad_id,
                       self.encode(FINGERPRINT_PROBE))


def _digest(*facts) -> str:
    """16 hex digits of the SHA-256 of `facts` as JSON."""
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def _check_chat_format(chat_format: str, where: str) -> str:
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"{where}: chat_format={chat_format!r}, expected one of {CHAT_FORMATS}")
    return chat_format


# ----------------------------------------------------------------------------- characters

# Every character the synthetic task writes, plus lowercase letters and light punctuation.
CHAR_ALPHABET = "\n 0123456789+-*()=:.,?abcdefghijklmnopqrstuvwxyz"


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet: pad=0, bos=1, eos=2, then CHAR_ALPHABET.

    The tokenizer of the synthetic reasoning task and the demo's tiny model (vocab 51).
    Special ids decode to nothing. A character outside the alphabet is an error.
    """

    def __init__(self, alphabet: str = CHAR_ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"CharTokenizer: alphabet {alphabet!r} repeats a character")
        self.alphabet = alphabet
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self._num_special = 3
        self._ids = {c: i + self._num_special for i, c in enumerate(alphabet)}
        self.vocab_size = self._num_special + len(alphabet)
        self.chat_format, self.system_prompt = "plain", None

    def encode(self, text: str) -> list[int]:
        """One id per character; raises ValueError naming a character not in the alphabet."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            pos = next(i for i, c in enumerate(text) if c not in self._ids)
            raise ValueError(
                f"CharTokenizer: character {e.args[0]!r} at position {pos} of {text!r} is not in "
                f"the alphabet {self.alphabet!r}"
            ) from None

    def fingerprint(self) -> str:
        """A digest of the alphabet and special ids (the probe of Tokenizer.fingerprint has
        characters outside the alphabet)."""
        return _digest(self.vocab_size, self.bos_id, self.eos_id, self.pad_id, self.alphabet)

    def decode(self, ids: Sequence[int]) -> str:
        """The characters of ids; pad / bos / eos decode to ''."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"CharTokenizer: id {i} outside the vocabulary [0, {self.vocab_size})")
            if i >= self._num_special:
                out.append(self.alphabet[i - self._num_special])
        return "".join(out)


# ----------------------------------------------------------------------------- SentencePiece


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (.model file), e.g. one trained by train_sentencepiece.

    Control tokens (pad, bos, eos) decode to ''. A model without a pad id pads with eos
    (padding is always described by an explicit mask, so the pad value is only filler).
    """

    def __init__(self, processor, path: str, chat_format: str = "plain", system_prompt: str | None = None):
        self._sp = processor
        self.path = path
        if processor.eos_id() < 0:
            raise ValueError(f"SentencePiece model {path}: has no eos id; expected a model trained with eos_id >= 0")
        self.vocab_size = processor.get_piece_size()
        self.eos_id = processor.eos_id()
        self.bos_id = processor.bos_id() if processor.bos_id() >= 0 else None
        self.pad_id = processor.pad_id() if processor.pad_id() >= 0 else self.eos_id
        self.chat_format = _check_chat_format(chat_format, f"SentencePiece model {path}")
        self.system_prompt = system_prompt

    @classmethod
    def load(cls, path: str | os.PathLike, chat_format: str = "plain", system_prompt: str | None = None):
        """Loads a SentencePiece .model file."""
        import sentencepiece as spm

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model {path}: no such file (expected a .model file)")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"SentencePiece model {path}: cannot be loaded ({e})") from e
        return cls(processor, path, chat_format, system_prompt)

    def encode(self, text: str) -> list[int]:
        """Token ids of text (no bos / eos)."""
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; control tokens decode to ''."""
        return self._sp.decode([int(i) for i in ids])


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_prefix: str | os.PathLike | None = None,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = (),
    chat_format: str = "plain",
) -> SentencePieceTokenizer:
    """Trains a small SentencePiece model on an iterator of texts and loads it.

    Writes {model_prefix}.model and .vocab (a temporary directory when model_prefix is
    None). Ids: pad=0, unk=1, bos=2, eos=3. The model reproduces any text exactly: no
    normalisation (identity rule, whitespace runs, tabs and newlines kept, no dummy
    prefix) and byte fallback (characters it never saw are UTF-8 byte tokens), which
    needs vocab_size >= 4 + 256 + the characters kept. vocab_size is an upper bound
    (hard_vocab_limit off) so a tiny corpus still trains. Kudo & Richardson (2018).
    """
    import sentencepiece as spm

    if vocab_size < 4 + 256 + 1:
        raise ValueError(f"train_sentencepiece: vocab_size={vocab_size}, expected >= 261 (4 special + 256 bytes + 1)")
    if model_prefix is None:
        model_prefix = os.path.join(tempfile.mkdtemp(prefix="rlr_spm_"), "spm")
    model_prefix = os.fspath(model_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            hard_vocab_limit=False,
            user_defined_symbols=list(user_defined_symbols),
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. vocab_size below 4 + 256 bytes + the distinct characters
        raise ValueError(f"train_sentencepiece(vocab_size={vocab_size}, model_prefix={model_prefix}): {e}") from e
    return SentencePieceTokenizer.load(model_prefix + ".model", chat_format=chat_format)


# ----------------------------------------------------------------------------- tokenizer.json


def _token_content(value) -> str | None:
    """A tokenizer_config.json token entry: a string, {"content": ...} or null."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer.json (Qwen2 / Qwen2.5, Llama 3 byte-level BPE) via `tokenizers`.

    Special tokens come from tokenizer_config.json (eos_token, pad_token, bos_token);
    a missing pad_token pads with eos. Special tokens decode to their text.
    """

    def __init__(self, tokenizer, path: str, eos: str, pad: str | None, bos: str | None,
                 chat_format: str, system_prompt: str | None):
        self._tok = tokenizer
        self.path = path
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._token_id(eos, "eos_token")
        self.pad_id = self._token_id(pad, "pad_token") if pad is not None else self.eos_id
        self.bos_id = self._token_id(bos, "bos_token") if bos is not None else None
        self.chat_format = _check_chat_format(chat_format, f"tokenizer {path}")
        self.system_prompt = system_prompt

    def _token_id(self, token: str, key: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer {self.path}: {key} {token!r} is not in the vocabulary")
        return token_id

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        tokenizer_config: str | os.PathLike | Mapping | None = None,
        chat_format: str | None = None,
        system_prompt: str | None = None,
    ) -> "HFTokenizer":
        """Loads tokenizer.json; special tokens from tokenizer_config.

        tokenizer_config: a dict, a path, or None for the tokenizer_config.json beside
        tokenizer.json; it must name eos_token. chat_format: None detects it from the
        vocabulary ("<|im_start|>" -> chatml, "<|start_header_id|>" -> llama3, else plain).
        system_prompt: None takes tokenizer_config's "system_prompt" (written by
            rlr.models.gguf_io.convert_gguf), else Qwen2.5's default for chatml and no system
            message otherwise.
        """
        from tokenizers import Tokenizer as _Tokenizer

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer {path}: no such file (expected a Hugging Face tokenizer.json)")
        try:
            tokenizer = _Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"tokenizer {path}: not a valid tokenizer.json ({e})") from e
        config_where = "tokenizer_config (a dict)"
        if tokenizer_config is None:
            tokenizer_config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
            if not os.path.isfile(tokenizer_config):
                raise FileNotFoundError(
                    f"tokenizer {path}: no {tokenizer_config} beside it; pass tokenizer_config= "
                    "(a path or a dict with at least 'eos_token')"
                )
        if not isinstance(tokenizer_config, Mapping):
            config_where = os.fspath(tokenizer_config)
            with open(config_where, encoding="utf-8") as f:
                tokenizer_config = json.load(f)
        eos = _token_content(tokenizer_config.get("eos_token"))
        if eos is None:
            raise ValueError(f"{config_where}: expected an 'eos_token' entry (for tokenizer {path})")
        if chat_format is None:
            vocab = tokenizer.get_vocab(with_added_tokens=True)
            chat_format = "chatml" if "<|im_start|>" in vocab else "llama3" if "<|start_header_id|>" in vocab else "plain"
        if system_prompt is None:
            system_prompt = tokenizer_config.get("system_prompt")
        if system_prompt is None and chat_format == "chatml":
            system_prompt = QWEN_SYSTEM_PROMPT
        return cls(
            tokenizer,
            path,
            eos=eos,
            pad=_token_content(tokenizer_config.get("pad_token")),
            bos=_token_content(tokenizer_config.get("bos_token")),
            chat_format=chat_format,
            system_prompt=system_prompt,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special tokens written in the text become their ids; no bos / eos added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; special tokens decode to their text."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


# ----------------------------------------------------------------------------- dispatch


def load_tokenizer(path_or_name: str | os.PathLike, **kwargs) -> Tokenizer:
    """A tokenizer by name or file: "char" -> CharTokenizer, "*.model" -> SentencePiece,
    "tokenizer.json" or a directory holding one -> HFTokenizer. kwargs go to the loader."""
    name = os.fspath(path_or_name)
    if name == "char":
        return CharTokenizer(**kwargs)
    expected = '"char", a SentencePiece *.model file, a tokenizer.json, or a directory holding tokenizer.json'
    if os.path.isdir(name):
        json_path = os.path.join(name, "tokenizer.json")
        if not os.path.isfile(json_path):
            raise FileNotFoundError(f"tokenizer {name}: directory has no tokenizer.json (expected {expected})")
        return HFTokenizer.from_file(json_path, **kwargs)
    if name.endswith(".model"):
        return SentencePieceTokenizer.load(name, **kwargs)
    if os.path.basename(name) == "tokenizer.json":
        return HFTokenizer.from_file(name, **kwargs)
    if not os.path.exists(name):
        raise FileNotFoundError(f"tokenizer {name}: no such file or directory (expected {expected})")
    raise ValueError(f"tokenizer {name}: unknown kind of file (expected {expected})")
