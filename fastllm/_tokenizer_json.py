"""Reading and writing Hugging Face `tokenizer.json` files with a byte-level BPE model.

Only what fastllm reproduces exactly is accepted; anything else (normalizers, byte fallback, word
suffixes, stripping added tokens) is refused with a message naming the file and the field, rather
than giving ids that silently differ from `tokenizers`.
"""

from __future__ import annotations

import json

from fastllm import _bpe


def _alphabet() -> tuple[dict[int, str], dict[str, int]]:
    to_char = {b: _bpe.byte_to_unicode(b) for b in range(256)}
    return to_char, {c: b for b, c in to_char.items()}


class _Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, what: str):
        raise ValueError(f"{self.path}: {what}")

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            self.fail(f"cannot read the file ({e.strerror})")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.fail(f"not valid JSON ({e})")
        if not isinstance(data, dict):
            self.fail("the top level is not a JSON object")
        return data

    def pattern(self, pre) -> str:
        """The pre-tokenization regex ('gpt2' for ByteLevel's own)."""
        if pre is None:
            self.fail("pre_tokenizer is null; a byte-level BPE needs ByteLevel pre-tokenization")
        steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
        if not isinstance(steps, list) or not steps or steps[-1].get("type") != "ByteLevel":
            self.fail(
                f"pre_tokenizer {json.dumps(pre)[:200]} is not supported (expected ByteLevel, or Split then ByteLevel)"
            )
        byte_level = steps[-1]
        if byte_level.get("add_prefix_space", False):
            self.fail("pre_tokenizer ByteLevel.add_prefix_space=true is not supported")
        if len(steps) == 1:
            if not byte_level.get("use_regex", True):
                self.fail("pre_tokenizer ByteLevel with use_regex=false and no Split has no pre-tokenization")
            return "gpt2"
        if len(steps) != 2 or steps[0].get("type") != "Split":
            self.fail(f"pre_tokenizer {json.dumps(pre)[:200]} is not supported (expected Split then ByteLevel)")
        split = steps[0]
        if byte_level.get("use_regex", True):
            self.fail("pre_tokenizer Split followed by ByteLevel with use_regex=true is not supported")
        if split.get("behavior") != "Isolated" or split.get("invert", False):
            self.fail(
                f"pre_tokenizer Split behavior {split.get('behavior')!r} invert={split.get('invert')} is not "
                f"supported (expected Isolated, not inverted)"
            )
        pat = split.get("pattern", {})
        if not isinstance(pat, dict) or not isinstance(pat.get("Regex"), str):
            self.fail(f"pre_tokenizer Split pattern {pat!r} is not supported (expected {{'Regex': ...}})")
        return pat["Regex"]

    def model(self, model, from_char) -> tuple[list, list, bool]:
        if not isinstance(model, dict):
            self.fail("'model' is missing or not an object")
        if model.get("type", "BPE") != "BPE":
            self.fail(f"model type {model.get('type')!r} is not supported (expected 'BPE')")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                self.fail(f"model.{key}={model[key]!r} is not supported by a byte-level BPE")
        if model.get("byte_fallback"):
            self.fail("model.byte_fallback=true is not supported (it is not a byte-level BPE)")
        vocab_json, merges_json = model.get("vocab"), model.get("merges")
        if not isinstance(vocab_json, dict):
            self.fail("model.vocab is missing or not an object of token -> id")
        if not isinstance(merges_json, list):
            self.fail("model.merges is missing or not a list")
        vocab, ids = [], {}
        for tok, i in vocab_json.items():
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                self.fail(f"model.vocab[{tok!r}] = {i!r} is not a non-negative integer id")
            try:
                raw = bytes(from_char[c] for c in tok)
            except KeyError:
                self.fail(f"model.vocab token {tok!r} has a character outside the byte-level alphabet")
            vocab.append((raw, i))
            ids[tok] = i
        merges = []
        for n, m in enumerate(merges_json):
            if isinstance(m, str):
                parts = m.split(" ")
            elif isinstance(m, list):
                parts = m
            else:
                parts = None
            if parts is None or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
                self.fail(f"model.merges[{n}] = {m!r} is not 'left right' or [left, right]")
            a, b = ids.get(parts[0]), ids.get(parts[1])
            if a is None or b is None:
                self.fail(f"model.merges[{n}] = {m!r}: {parts[0] if a is None else parts[1]!r} is not in model.vocab")
            merges.append((a, b))
        return vocab, merges, bool(model.get("ignore_merges", False))

    def added_tokens(self, added) -> list[tuple[str, int, bool]]:
        if added is None:
            return []
        if not isinstance(added, list):
            self.fail("added_tokens is not a list")
        out = []
        for t in added:
            if not isinstance(t, dict) or not isinstance(t.get("content"), str) or not isinstance(t.get("id"), int):
                self.fail(f"added_tokens entry {t!r} needs a str 'content' and an int 'id'")
            for flag in ("lstrip", "rstrip", "single_word"):
                if t.get(flag):
                    self.fail(f"added token {t['content']!r} has {flag}=true, which is not supported")
            out.append((t["content"], t["id"], bool(t.get("special", False))))
        return out


def read_tokenizer_json(path: str):
    """Returns (vocab [(bytes, id)], merges [(id, id)], specials [(text, id, special)], pattern, ignore_merges)."""
    r = _Reader(path)
    data = r.load()
    if data.get("normalizer") is not None:
        r.fail(f"normalizer {data['normalizer'].get('type', data['normalizer'])!r} is not supported")
    pattern = r.pattern(data.get("pre_tokenizer"))
    vocab, merges, ignore_merges = r.model(data.get("model"), _alphabet()[1])
    specials = r.added_tokens(data.get("added_tokens"))
    # An added token that is also an ordinary entry of the model under the same id stays special only.
    return vocab, merges, specials, pattern, ignore_merges


def write_tokenizer_json(
    path: str, *, vocab: dict[bytes, int], merges, specials, regex: str, gpt2_regex: bool, ignore_merges: bool
):
    to_char = _alphabet()[0]

    def name(raw: bytes) -> str:
        return "".join(to_char[b] for b in raw)

    by_id = {i: name(raw) for raw, i in vocab.items()}
    # Added tokens also go into the model's vocabulary, as HF's own converters write them: `tokenizers`
    # keeps the id of an added token found there, but numbers the others consecutively after the
    # vocabulary, which would shift specials that sit after unused ids (cl100k: 100256, 100261..100275).
    by_id.update({i: name(text.encode()) for text, i, _ in specials})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": gpt2_regex}
    if gpt2_regex:
        pre = byte_level
    else:
        split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
        pre = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": special,
            }
            for text, i, special in specials
        ],
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": {by_id[i]: i for i in sorted(by_id)},
            "merges": [[by_id[a], by_id[b]] for a, b in merges],
        },
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
