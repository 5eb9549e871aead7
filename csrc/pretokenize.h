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
};

// "gpt2" | "r50k" | "p50k" | "cl100k" | "o200k" or a regex. Throws std::invalid_argument naming the
// problem for a regex it cannot compile.
std::unique_ptr<Pretokenizer> make_pretokenizer(std::string_view pattern);

}  // namespace fastllm
