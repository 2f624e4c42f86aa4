"""Tokenizers: loading through transformers, locally built character and BPE tokenizers, batching.

Nothing can be downloaded here, so tests, the demo and the synthetic-task base model use
`build_char_tokenizer`: one token per character plus chat special tokens, wrapped as a
`transformers.PreTrainedTokenizerFast` with a chat template, so every code path (chat
template, special tokens, save/load) is the one real checkpoints take. A random-weights run
(`config.model_init="random"`) of a model directory without tokenizer files uses
`build_bpe_tokenizer`: the same special tokens and template over a byte-level BPE learned
from the training data, so real-sized vocabularies and sequence lengths need no download.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable

import jinja2
import numpy as np
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from sharpjax.errors import ModelFileError

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, USER, ASSISTANT, SYSTEM)
# Role header, content, end-of-turn: the shape of Llama/Qwen templates, with our tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
DEFAULT_ALPHABET = string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "")
# Byte-level BPE: the special tokens, then one symbol per byte, before any merge.
BPE_MIN_VOCAB = len(SPECIAL_TOKENS) + 256


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer with chat special tokens and a chat template.

    Ids: the special tokens first (pad=0, bos=1, end/eos=2, ...), then `alphabet` in order,
    then `<|unk|>` for any character outside the alphabet.
    """
    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab |= {c: len(SPECIAL_TOKENS) + i for i, c in enumerate(chars)}
    vocab["<|unk|>"] = len(vocab)
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return _with_chat_template(tok, unk_token="<|unk|>")


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learned from `texts`, with chat special tokens and a chat template.

    Ids: the special tokens first (pad=0, bos=1, end/eos=2, ...), then the 256 byte symbols,
    then merges, `vocab_size` ids in all (fewer when `texts` run out of pairs to merge). Any
    text encodes (every byte has a symbol), so there is no unknown token.

    Raises:
      ValueError: `vocab_size` < BPE_MIN_VOCAB (the trainer would exceed it: ids past the model's rows).
    """
    if vocab_size < BPE_MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {BPE_MIN_VOCAB} ids "
                         f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes).")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _with_chat_template(tok, unk_token=None)


def _with_chat_template(tok: tokenizers.Tokenizer, *, unk_token: str | None) -> transformers.PreTrainedTokenizerFast:
    """`tok` (holding SPECIAL_TOKENS) as a transformers tokenizer: our special tokens, chat template, left padding."""
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=unk_token,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


# The files a tokenizer is read from: the fast one (tokenizer.json), its settings, the chat
# template, and the vocabularies a slow tokenizer is converted from when tokenizer.json is absent.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SLOW_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", CHAT_TEMPLATE_FILE, "chat_template.json",
                   *SLOW_TOKENIZER_FILES)
_REFETCH = "re-copy the tokenizer files from the model it was made from"


def has_tokenizer_files(model_dir: str) -> bool:
    """Whether `model_dir` holds any file `load_tokenizer` reads."""
    return any(os.path.isfile(os.path.join(model_dir, name)) for name in TOKENIZER_FILES)


def load_tokenizer(model_dir: str) -> transformers.PreTrainedTokenizerBase:
    """`AutoTokenizer` from a local model directory, left padding, pad token guaranteed.

    A missing, truncated or corrupt tokenizer file or chat template is a one-line ModelFileError
    naming the file (transformers' own errors name none, or ask to install sentencepiece).
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir} is not a directory: expected a Hugging Face model directory.")
    _check_tokenizer_files(model_dir)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError, KeyError, OSError... for a bad file
        raise ModelFileError(f"{model_dir}: its tokenizer cannot be loaded ({_one_line(e)}); {_REFETCH}.") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        # Llama 3 ships without a pad token; padding is masked anyway, any id works.
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None):
        # transformers compiles the template at the first render: a truncated one would fail
        # there, after the model loaded. Render a turn now, as `render_chat` will.
        try:
            render_chat(tok, "1 + 1")
        except jinja2.TemplateError as e:
            template = os.path.join(model_dir, CHAT_TEMPLATE_FILE)
            source = template if os.path.exists(template) else os.path.join(model_dir, "tokenizer_config.json")
            where = f", line {e.lineno}" if getattr(e, "lineno", None) else ""
            raise ModelFileError(f"{source}: the chat template is not valid Jinja ({_one_line(e)}{where}): the file "
                                 f"is truncated or corrupt; {_REFETCH}.") from None
    return tok


def _check_tokenizer_files(model_dir: str) -> None:
    """ModelFileError naming the first tokenizer file of `model_dir` that is missing or cannot be read."""
    from sharpjax.models.hf import read_json

    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        if not any(os.path.isfile(os.path.join(model_dir, f)) for f in SLOW_TOKENIZER_FILES):
            raise ModelFileError(f"{path} not found: the model directory has no tokenizer; copy tokenizer.json and "
                                 "tokenizer_config.json from the model it was made from (save_pretrained writes them).")
    else:
        try:
            tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception with serde's message
            raise ModelFileError(f"{path} cannot be read as a tokenizer ({_one_line(e)}): the file is truncated or "
                                 f"corrupt; {_REFETCH}.") from None
    for name in ("tokenizer_config.json", "chat_template.json"):
        if os.path.isfile(os.path.join(model_dir, name)):
            read_json(os.path.join(model_dir, name), name)
    path = os.path.join(model_dir, CHAT_TEMPLATE_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ModelFileError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                                 f"the chat template is corrupt; {_REFETCH}.") from None
        if not text.strip():
            raise ModelFileError(f"{path} is empty: the chat template is truncated; {_REFETCH}.")


def _one_line(e: Exception) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def render_chat(tokenizer: transformers.PreTrainedTokenizerBase, user_message: str) -> str:
    """One user turn rendered with the model's own chat template, generation prompt on."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template; "
            "use an instruct model's tokenizer or set tokenizer.chat_template."
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )


def bucket_length(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `length` (compile once per bucket, not per batch)."""
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"prompt of {length} tokens is longer than the largest bucket {max(buckets)}.")


def left_pad(
    token_lists: list[list[int]], *, pad_id: int, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads id lists to `length` (default: the longest).

    Returns:
      (tokens [B, length] int32, mask [B, length] int32 with 1 on real tokens).
    Raises ValueError when a list is longer than `length` (never truncates silently).
    """
    longest = max(len(t) for t in token_lists)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a prompt has {longest} tokens, more than the padded length {length}.")
    tokens = np.full((len(token_lists), length), pad_id, np.int32)
    mask = np.zeros((len(token_lists), length), np.int32)
    for i, ids in enumerate(token_lists):
        if ids:
            tokens[i, length - len(ids) :] = ids
            mask[i, length - len(ids) :] = 1
    return tokens, mask
