// Pre-tokenization: split UTF-8 text into the pieces that BPE encodes one at a time.
//
// The built-in patterns are hand-written scanners that reproduce, byte for byte, what
// tiktoken's regexes (Rust `fancy-regex`) match:
//   "gpt2" (alias "r50k", "p50k"): 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   "cl100k": '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//             |\s++$|\s*[\r\n]|\s+(?!\S)|\s
//   "o200k": see pretokenize.cpp
// Any other string is compiled as a regular expression (regex.h).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fastllm {

// A piece is the byte range [first, second) of the text.
using Span = std::pair<size_t, size_t>;

class Pretokenizer {
 public:
  virtual ~Pretokenizer() = default;
  // Appends the pieces of `text` to `out`, in order, non-overlapping. Bytes that no piece covers are
  // dropped (regex find-iter semantics; the built-in patterns cover every byte). Invalid UTF-8 never
  // causes undefined behaviour: each invalid byte is read as one code point of no category.
  virtual void split(std::string_view text, std::vector<Span>& out) const = 0;
  // The pattern as given (a built-in name or the regex source).
  virtual const std::string& pattern() const = 0;
  // The first offset c in [from, to) where the text can be cut in two, its pieces being those of text[0, c)
  // followed by those of text[c, end) moved by c (so both halves can be split on threads of their own); text.size()
  // where the pattern knows of none there. The built-in patterns cut at a space between two letters ("x| y"); a
  // regex pattern knows of none.
  virtual size_t cut_at_or_after(std::string_view text, size_t from, size_t to) const {
    (void)from, (void)to;
    return text.size();
  }
};

// "gpt2" | "r50k" | "p50k" | "cl100k" | "o200k" or a regex. Throws std::invalid_argument naming the
// problem for a regex it cannot compile.
std::unique_ptr<Pretokenizer> make_pretokenizer(std::string_view pattern);

}  // namespace fastllm
