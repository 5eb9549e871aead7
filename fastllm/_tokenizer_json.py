"""Reading and writing Hugging Face `tokenizer.json` files with a byte-level BPE model.

Only what fastllm reproduces exactly is accepted; anything else (normalizers, byte fallback, word
suffixes, stripping added tokens) is refused with a message naming the file and the field, rather
than giving ids that silently differ from `tokenizers`.
"""

from __future__ import annotations

import json

from fastllm import _bpe

_MAX_ID = _bpe.TokenizerJson.MAX_ID  # larger ids would size the tokenizer's id tables at gigabytes


def _is_id(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= _MAX_ID


def _alphabet() -> tuple[dict[int, str], dict[str, int]]:
    to_char = {b: _bpe.byte_to_unicode(b) for b in range(256)}
    return to_char, {c: b for b, c in to_char.items()}


class _Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, what: str):
        raise ValueError(f"{self.path}: {what}")

    def load(self) -> tuple[_bpe.TokenizerJson, dict]:
        """The C++ reader decodes model.vocab and model.merges (the bulk of the file); the rest comes back
        as JSON text with those two values replaced by {} and [], to be checked here."""
        doc = _bpe.read_tokenizer_json(self.path)  # ValueError naming the file, line and problem
        try:
            data = json.loads(doc.rest)
        except (ValueError, RecursionError) as e:  # not expected: the C++ reader is the stricter
            self.fail(f"not valid JSON ({e})")
        if not isinstance(data, dict):
            self.fail("the top level is not a JSON object")
        return doc, data

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

    def model(self, model, doc: _bpe.TokenizerJson) -> bool:
        """Checks model's fields in the order a reader meets them; returns ignore_merges."""
        if not isinstance(model, dict):
            self.fail("'model' is missing or not an object")
        if model.get("type", "BPE") != "BPE":
            self.fail(f"model type {model.get('type')!r} is not supported (expected 'BPE')")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                self.fail(f"model.{key}={model[key]!r} is not supported by a byte-level BPE")
        if model.get("byte_fallback"):
            self.fail("model.byte_fallback=true is not supported (it is not a byte-level BPE)")
        # Decoded in C++, so here as {} and [] (or left in place when of another type).
        if not isinstance(model.get("vocab"), dict):
            self.fail("model.vocab is missing or not an object of token -> id")
        if not isinstance(model.get("merges"), list):
            self.fail("model.merges is missing or not a list")
        self.entry_problem(doc.vocab_problem)
        self.entry_problem(doc.merges_problem)
        return bool(model.get("ignore_merges", False))

    def entry_problem(self, problem):
        """Raises for the first unusable entry of model.vocab or model.merges, found by the C++ reader."""
        if problem is None:
            return
        kind, n, item, value, side = problem
        item = json.loads(item)  # the vocab key or the merge, as JSON text
        if kind == "vocab-id":
            self.fail(f"model.vocab[{item!r}] = {json.loads(value)!r} is not a non-negative integer id")
        if kind == "vocab-id-too-large":
            self.fail(f"model.vocab[{item!r}] = {value} is too large (ids must be at most {_MAX_ID})")
        if kind == "vocab-char":
            self.fail(f"model.vocab token {item!r} has a character outside the byte-level alphabet")
        if kind == "merge-shape":
            self.fail(f"model.merges[{n}] = {item!r} is not 'left right' or [left, right]")
        parts = item.split(" ") if isinstance(item, str) else item
        self.fail(f"model.merges[{n}] = {item!r}: {parts[side]!r} is not in model.vocab")

    def added_tokens(self, added) -> list[tuple[str, int, bool]]:
        if added is None:
            return []
        if not isinstance(added, list):
            self.fail("added_tokens is not a list")
        out = []
        for t in added:
            if not isinstance(t, dict) or not isinstance(t.get("content"), str) or not _is_id(t.get("id")):
                self.fail(f"added_tokens entry {t!r} needs a str 'content' and an int 'id' (0 to {_MAX_ID})")
            for flag in ("lstrip", "rstrip", "single_word"):
                if t.get(flag):
                    self.fail(f"added token {t['content']!r} has {flag}=true, which is not supported")
            out.append((t["content"], t["id"], bool(t.get("special", False))))
        return out


def read_tokenizer_json(path: str):
    """Returns (doc, specials [(text, id, special)], pattern, ignore_merges) where doc holds the decoded
    vocabulary and merges for `_bpe.CoreBPE.from_tokenizer_json`."""
    r = _Reader(path)
    doc, data = r.load()
    if data.get("normalizer") is not None:
        r.fail(f"normalizer {data['normalizer'].get('type', data['normalizer'])!r} is not supported")
    pattern = r.pattern(data.get("pre_tokenizer"))
    ignore_merges = r.model(data.get("model"), doc)
    specials = r.added_tokens(data.get("added_tokens"))
    # An added token that is also an ordinary entry of the model under the same id stays special only.
    return doc, specials, pattern, ignore_merges


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
            "vocab": {},
            "merges": [],
        },
    }
    # model.vocab and model.merges are nearly all of the file: one entry per line, without the indentation and the
    # line per symbol that json.dump gives them (a file half the size, read twice as fast).
    quoted = {i: json.dumps(name, ensure_ascii=False) for i, name in by_id.items()}
    bulk = {
        '"vocab": {}': "{\n" + ",\n".join(f"{quoted[i]}:{i}" for i in sorted(quoted)) + "\n}",
        '"merges": []': "[\n" + ",\n".join(f"[{quoted[a]},{quoted[b]}]" for a, b in merges) + "\n]",
    }
    text = json.dumps(data, ensure_ascii=False, indent=1)
    for empty, full in bulk.items():  # found as a key: inside JSON strings, quotes are escaped
        head, key, tail = text.partition(empty)
        text = head + key[:-2] + full + tail
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
