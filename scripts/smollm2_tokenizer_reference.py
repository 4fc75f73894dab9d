#!/usr/bin/env python3
"""Golden token ids for SmolLM2-135M-Instruct, from an implementation independent of ours.

Reads the vocabulary, merges and token types straight from the GGUF with the `gguf` PyPI package
(llama.cpp's own reader) and tokenizes with a byte-level BPE written here, following llama.cpp's
rules for `tokenizer.ggml.pre = "smollm"` (src/llama-vocab.cpp): control tokens are split off
first, then the text is cut with the regexes `\\p{N}` (each digit alone) and the GPT-2 pattern,
each piece is mapped byte -> unicode (GPT-2's bytes_to_unicode) and merged by the lowest-ranked
pair, as in OpenAI's GPT-2 encoder.py. No code is shared with the Rust `tokenizers` crate that
tests/gguf.rs checks against this output.

Usage (writes tests/fixtures/smollm2_tokens.json):
    python3 -m venv /tmp/tokref && /tmp/tokref/bin/pip install gguf==0.19.0 regex==2026.11.15
    /tmp/tokref/bin/python scripts/smollm2_tokenizer_reference.py \\
        ~/.cache/notellm/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/smollm2_tokens.json
"""

import hashlib
import json
import sys

import regex
from gguf import GGUFReader

CASES = [
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "Hello, world! How's it going?",
    "I'm sure they'll say we've done it, and you'd agree.",
    "don't DON'T Don't",
    "1234567890",
    "Version 2.0.1 was released on 2024-11-23 at 14:05.",
    "3.14159 + 2.71828 = 5.85987",
    "x\u00b2 + \u00bd = \u2154",
    "na\u00efve caf\u00e9 r\u00e9sum\u00e9",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "emoji \U0001F642\U0001F680 test",
    "tabs\tand\nnewlines\n\n  indented",
    "trailing spaces   ",
    "a  b   c    d",
    "\u00a0non-breaking\u00a0space",
    "ALL CAPS AND MiXeD CaSe",
    "#hashtag #debian #linux",
    "sudo apt-get install -y python3-pip && pip3 install --user numpy",
    'fn main() { println!("{}", x.len()); }',
    "https://www.debian.org/doc/manuals/debian-reference/ch02.en.html",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|endoftext|>Extract the note information in json format, compress it into one word for "
    "recommendation, and generate the category of the note. {'title': apt fails, 'topic': , "
    "'content': E: Release file is not valid yet.}. The compression word is:\"",
    "",
]

# llama.cpp's "smollm" pre-tokenizer: these two regexes, applied one after the other.
DIGITS = regex.compile(r"\p{N}")
GPT2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(
        range(ord("\u00ae"), ord("\u00ff") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def split_keep(pattern, pieces):
    """Splits every piece at the matches of `pattern`, keeping both matches and the gaps."""
    out = []
    for p in pieces:
        pos = 0
        for m in pattern.finditer(p):
            if m.start() > pos:
                out.append(p[pos : m.start()])
            out.append(m.group(0))
            pos = m.end()
        if pos < len(p):
            out.append(p[pos:])
    return out


class Reference:
    def __init__(self, path):
        r = GGUFReader(path)
        f = r.fields
        assert f["tokenizer.ggml.model"].contents() == "gpt2"
        assert f["tokenizer.ggml.pre"].contents() == "smollm"
        self.tokens = f["tokenizer.ggml.tokens"].contents()
        types = f["tokenizer.ggml.token_type"].contents()
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        merges = f["tokenizer.ggml.merges"].contents()
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.control = sorted((t for t, ty in zip(self.tokens, types) if ty == 3), key=len, reverse=True)
        self.byte_enc = bytes_to_unicode()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.ids[p] for p in parts]

    def encode_plain(self, text):
        ids = []
        for piece in split_keep(GPT2, split_keep(DIGITS, [text])):
            ids += self.bpe("".join(self.byte_enc[b] for b in piece.encode("utf-8")))
        return ids

    def encode(self, text):
        ids, pos = [], 0
        while pos < len(text):
            # the earliest control token, longest first at the same place
            hits = [(text.find(c, pos), -len(c), c) for c in self.control if text.find(c, pos) >= 0]
            if not hits:
                ids += self.encode_plain(text[pos:])
                break
            start, _, c = min(hits)
            ids += self.encode_plain(text[pos:start])
            ids.append(self.ids[c])
            pos = start + len(c)
        return ids


def main():
    gguf_path, out_path = sys.argv[1], sys.argv[2]
    with open(gguf_path, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    ref = Reference(gguf_path)
    cases = [{"text": t, "ids": ref.encode(t)} for t in CASES]
    doc = {
        "about": "Golden SmolLM2-135M-Instruct token ids from an independent reference tokenizer "
        "(gguf package + a pure-Python byte-level BPE with llama.cpp's smollm pre-tokenizer rules).",
        "command": "python3 -m venv /tmp/tokref && /tmp/tokref/bin/pip install gguf==0.19.0 regex==2026.11.15 && "
        "/tmp/tokref/bin/python scripts/smollm2_tokenizer_reference.py "
        "~/.cache/notellm/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/smollm2_tokens.json",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": sha,
        "cases": cases,
    }
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    print(f"{len(cases)} cases written to {out_path}")


if __name__ == "__main__":
    main()
