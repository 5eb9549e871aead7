// A regular-expression engine for user-supplied pre-tokenization patterns (Llama-3's, Qwen2's,
// GPT-2's original, or any tiktoken / Hugging Face style pattern), with the matching semantics of
// tiktoken's fancy-regex: leftmost-first alternation, backtracking, greedy / lazy / possessive
// quantifiers, atomic groups and lookaround, over the code points of UTF-8 text.
//
// Syntax: literals and escapes (\n \r \t \f \v \a \e \xHH \x{H..} \uHHHH \u{H..} \UHHHHHHHH, an
// escaped symbol is itself); `.`; classes [...] with ranges, negation and nested shorthands (a
// '-' next to a shorthand is literal, as in Python); \d \D \s \S \w \W, \h \H (hex digits, as in
// fancy-regex); \p{..} / \P{..} / \pL with general categories by short or long name
// (L, Lu, Letter, Uppercase_Letter, gc=Lu, ...), Any, ASCII, White_Space, and Python's \p{^L};
// `|`; groups (...), (?:...), (?P<n>...), (?<n>...), (?>...) atomic, (?=...) (?!...) lookahead,
// (?<=...) (?<!...) fixed-length lookbehind, (?#...) comments; quantifiers * + ? {n} {n,} {n,m}
// {,m}, each with a lazy `?` or possessive `+` form; anchors ^ $ \A \z \Z \b \B; flags i m s x U,
// inline (?i) (to the end of the enclosing group) or scoped (?i:...), (?-i:...).
// Not supported (std::invalid_argument): backreferences, conditionals, recursion, \G, \K, scripts
// and binary properties other than the above, class set operations, nested classes.
//
// Semantics that differ between tiktoken (Rust) and Python's `regex` follow tiktoken:
//   `$` is the end of the text (Python's also matches before a final "\n"); `\Z` is fancy-regex's
//   "only newlines remain" (Python's is the end of the text); an inline (?i) lasts to the end of
//   its group (Python's V0 applies it to the whole pattern); find_all() resumes after an empty
//   match one code point later and drops an empty match right after a match (Python allows both;
//   tiktoken itself panics on empty pieces, and the Pretokenizer drops them).
// Case-insensitive matching uses Unicode simple case folding (k matches K and U+212A KELVIN SIGN,
// s matches S and U+017F LONG S), as both engines do; a class under (?i) gains the folding partners
// of its members (Rust's rule: Python's `regex` makes (?i)\p{Lu} match every cased letter, U+FB00
// included, and (?i)\u0131 match I).
// A loop iteration that matches nothing ends the loop (Python's and PCRE's rule). Rust's automata
// instead drop that path, which differs only for loop bodies whose preferred choice matches
// nothing while a later one consumes: `x(?:\S|\n??)+` on "xa\nb" gives "xa" here and in Python,
// "xa\nb" in tiktoken.
//
// Cost: matching backtracks. Once a text has cost more than the tokenizer patterns ever need, the
// matcher memoizes failed (loop, position) states, which makes `(a|a)*b` or `(\w|\p{L})*x`
// linear; states inside lookaround and atomic groups cannot be memoized, and nested single-character
// loops (`a*a*a*b`, `(?:x+x+)+y`) stay polynomial. So every find_all() / split() runs under a step
// budget of kBaseSteps + kStepsPerByte * text size (steps: frames popped and characters scanned by
// a quantifier); going past it throws std::runtime_error (RuntimeError in Python) instead of
// hanging. The tokenizer patterns (Llama-3, Qwen2, GPT-2, cl100k, o200k, DeepSeek) take 1 to 11
// steps per byte on the texts tried, long runs of one character included. The matcher never
// recurses, so text size is bounded by memory, not by the stack.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pretokenize.h"

namespace fastllm {

namespace rx {
struct Program;
}

class Regex {
 public:
  static constexpr uint64_t kBaseSteps = 10'000'000;
  static constexpr uint64_t kStepsPerByte = 256;

  // Throws std::invalid_argument with the position and the problem for malformed or unsupported syntax.
  explicit Regex(std::string_view pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // The leftmost match that starts at or after byte `start` (a code point boundary), as
  // [begin, end) byte offsets; false if there is none.
  bool find(std::string_view text, size_t start, Span* match) const;
  // Every match, in order, as fancy-regex's find_iter yields them; empty matches only if
  // keep_empty. Throws std::runtime_error past the step budget.
  void find_all(std::string_view text, std::vector<Span>& out, bool keep_empty = false) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::unique_ptr<const rx::Program> prog_;
};

// A Pretokenizer whose pieces are the non-empty matches of `pattern` (regex find-iter semantics:
// bytes no match covers are dropped). Throws std::invalid_argument for a pattern it cannot compile.
std::unique_ptr<Pretokenizer> make_regex_pretokenizer(std::string_view pattern);

}  // namespace fastllm
