// Hand-written scanners for the built-in pre-tokenization patterns.
//
// Each scanner is a direct transcription of one tiktoken 0.14 regex, alternative by alternative, in
// the order the backtracking matcher tries them; the comments quote the alternative being matched.
// They must agree with tiktoken byte for byte, so every backtracking step the regex can take is
// resolved here by reasoning about runs (see the o200k letter alternatives and the \s runs).
//
// Speed: one pass, no allocation beyond appending spans, no virtual call per character. ASCII bytes
// are classified through a 128-entry table; other bytes are decoded (and validated) in place and
// looked up in the generated two-stage Unicode 16.0 table (unicode_tables.h).
#include "pretokenize.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "regex.h"
#include "unicode_tables.h"

namespace fastllm {
namespace {

// ==== Character classes ====

// Class bits of one code point: the Unicode flags (bits 0-7) plus facts the patterns single out.
constexpr uint32_t kLu = unicode::kLu;
constexpr uint32_t kLl = unicode::kLl;
constexpr uint32_t kLt = unicode::kLt;
constexpr uint32_t kLm = unicode::kLm;
constexpr uint32_t kLo = unicode::kLo;
constexpr uint32_t kMark = unicode::kMark;
constexpr uint32_t kNumber = unicode::kNumber;
constexpr uint32_t kSpace = unicode::kSpace;  // \s
constexpr uint32_t kOther = 1u << 8;          // [^\s\p{L}\p{N}]: punctuation, symbols, marks, controls, invalid bytes
constexpr uint32_t kNewline = 1u << 9;        // [\r\n]
constexpr uint32_t kSlash = 1u << 10;         // '/', which o200k lets trail punctuation
constexpr uint32_t kEnd = 1u << 11;           // past the end of the text; no other bit is set
constexpr uint32_t kLetter = unicode::kLetter;  // \p{L}
// o200k's two letter classes: "upper" [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], "lower" [\p{Ll}\p{Lm}\p{Lo}\p{M}].
constexpr uint32_t kUpper = kLu | kLt | kLm | kLo | kMark;
constexpr uint32_t kLower = kLl | kLm | kLo | kMark;

constexpr uint32_t class_of_flags(uint32_t flags) {
  return (flags & (kLetter | kNumber | kSpace)) ? flags : flags | kOther;
}

constexpr std::array<uint32_t, 128> make_ascii_classes() {
  std::array<uint32_t, 128> table{};
  for (uint32_t b = 0; b < 128; ++b) table[b] = class_of_flags(unicode::kAsciiFlags[b]);
  table['\r'] |= kNewline;
  table['\n'] |= kNewline;
  table['/'] |= kSlash;
  return table;
}
constexpr std::array<uint32_t, 128> kAsciiClass = make_ascii_classes();

// An invalid UTF-8 byte decodes to this "code point": it equals no literal and has no category, so
// it is kOther (and may prefix a word), exactly as an unassigned code point would be.
constexpr uint32_t kInvalidCp = 0x110000;

// One decoded code point at some position.
struct Char {
  uint32_t cp;   // kInvalidCp for an invalid byte
  uint32_t len;  // bytes, 1..4 (0 only for the end sentinel)
  uint32_t cls;  // class bits
};
constexpr Char kEndChar = {kInvalidCp, 0, kEnd};

inline bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// ==== The text being split ====

class Text {
 public:
  explicit Text(std::string_view text) : s_(reinterpret_cast<const uint8_t*>(text.data())), n_(text.size()) {}

  size_t size() const { return n_; }

  // The code point at i, or kEndChar when i is at (or past) the end.
  Char peek(size_t i) const {
    if (i >= n_) return kEndChar;
    const uint8_t b = s_[i];
    if (b < 0x80) return Char{b, 1, kAsciiClass[b]};
    return decode_multibyte(i);
  }

  // End of the longest run of code points from i whose class intersects `mask`.
  size_t run(size_t i, uint32_t mask) const {
    while (i < n_) {
      const uint8_t b = s_[i];
      if (b < 0x80) {
        if (!(kAsciiClass[b] & mask)) break;
        ++i;
      } else {
        const Char c = decode_multibyte(i);
        if (!(c.cls & mask)) break;
        i += c.len;
      }
    }
    return i;
  }

 private:
  // s_[i] >= 0x80. Accepts exactly the well-formed sequences of Unicode Table 3-7 (no overlongs,
  // surrogates or values past U+10FFFF); anything else is one invalid byte.
  Char decode_multibyte(size_t i) const {
    const uint8_t b0 = s_[i];
    const size_t avail = n_ - i;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      if (avail >= 2 && is_continuation(s_[i + 1])) return make((b0 & 0x1Fu) << 6 | (s_[i + 1] & 0x3Fu), 2);
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      // The second byte's range excludes overlongs (E0) and surrogates (ED).
      const uint8_t lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
      if (avail >= 3 && s_[i + 1] >= lo && s_[i + 1] <= hi && is_continuation(s_[i + 2]))
        return make((b0 & 0x0Fu) << 12 | (s_[i + 1] & 0x3Fu) << 6 | (s_[i + 2] & 0x3Fu), 3);
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      // The second byte's range excludes overlongs (F0) and values past U+10FFFF (F4).
      const uint8_t lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
      if (avail >= 4 && s_[i + 1] >= lo && s_[i + 1] <= hi && is_continuation(s_[i + 2]) &&
          is_continuation(s_[i + 3]))
        return make((b0 & 0x07u) << 18 | (s_[i + 1] & 0x3Fu) << 12 | (s_[i + 2] & 0x3Fu) << 6 | (s_[i + 3] & 0x3Fu),
                    4);
    }
    return Char{kInvalidCp, 1, kOther};
  }

  static Char make(uint32_t cp, uint32_t len) { return Char{cp, len, class_of_flags(unicode::flags_of(cp))}; }

  const uint8_t* s_;
  size_t n_;
};

// ==== Pieces shared by the patterns ====

// `'(?:[sdmt]|ll|ve|re)` at i, where text[i] is an apostrophe; case-insensitive (Rust simple case
// folding, so U+017F LONG S counts as s) when kIgnoreCase. Returns the end, or 0 for no match.
// o200k's `(?i:'s|'t|'re|'ve|'m|'ll|'d)` is the same set.
template <bool kIgnoreCase>
size_t contraction(const Text& t, size_t i) {
  auto letter = [](const Char& c) { return kIgnoreCase ? unicode::fold_to_ascii_letter(c.cp) : c.cp; };
  const Char c1 = t.peek(i + 1);
  const size_t e1 = i + 1 + c1.len;
  const uint32_t l1 = letter(c1);
  if (l1 == 's' || l1 == 'd' || l1 == 'm' || l1 == 't') return e1;
  const uint32_t want = l1 == 'l' ? 'l' : (l1 == 'v' || l1 == 'r') ? 'e' : 0;
  if (want == 0) return 0;
  const Char c2 = t.peek(e1);
  return letter(c2) == want ? e1 + c2.len : 0;
}

// `\p{N}{1,3}` at i, where text[i] is a number.
size_t digits_1_to_3(const Text& t, size_t i, const Char& first) {
  size_t end = i + first.len;
  for (int k = 1; k < 3; ++k) {
    const Char c = t.peek(end);
    if (!(c.cls & kNumber)) break;
    end += c.len;
  }
  return end;
}

// The maximal run of \s from i, with the two positions the \s alternatives backtrack to.
struct SpaceRun {
  size_t end;           // end of the run
  size_t last_start;    // start of its last code point (the run's start if it has only one)
  size_t newline_end;   // just past its last \r or \n; 0 if it has none
};

SpaceRun space_run(const Text& t, size_t i) {
  SpaceRun r{i, i, 0};
  for (Char c = t.peek(i); c.cls & kSpace; c = t.peek(r.end)) {
    r.last_start = r.end;
    r.end += c.len;
    if (c.cls & kNewline) r.newline_end = r.end;
  }
  return r;
}

// `\s+(?!\S)|\s` at the start of a \s run that does not reach the end of the text: the greedy run
// backs off one code point so the last one can prefix the next word; a lone \s matches by itself.
size_t space_backoff(const SpaceRun& r, size_t i) { return r.last_start > i ? r.last_start : r.end; }

// The start of the class run for ` ?X++` alternatives: i+1 if text[i] is ' ' followed by a member of
// `mask`, else i. Returns the code point at that start through *c.
size_t optional_space(const Text& t, size_t i, uint32_t mask, Char* c) {
  if (c->cp == ' ') {
    const Char next = t.peek(i + 1);
    if (next.cls & mask) {
      *c = next;
      return i + 1;
    }
  }
  return i;
}

// ==== gpt2 / r50k / p50k ====
// '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s

struct Gpt2 {
  static size_t next(const Text& t, size_t i) {
    Char c = t.peek(i);
    if (c.cp == '\'') {
      if (size_t e = contraction<false>(t, i)) return e;
    }
    // ` ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++`: a run of one class, optionally after one ' '.
    const size_t start = optional_space(t, i, kLetter | kNumber | kOther, &c);
    for (uint32_t cls : {kLetter, kNumber, kOther}) {
      if (c.cls & cls) return t.run(start + c.len, cls);
    }
    // c is \s.
    const SpaceRun r = space_run(t, i);
    if (r.end == t.size()) return r.end;  // \s++$
    return space_backoff(r, i);
  }
};

// ==== cl100k ====
// '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$
// |\s*[\r\n]|\s+(?!\S)|\s

struct Cl100k {
  static size_t next(const Text& t, size_t i) {
    Char c = t.peek(i);
    if (c.cp == '\'') {
      if (size_t e = contraction<true>(t, i)) return e;
    }
    // `[^\r\n\p{L}\p{N}]?+\p{L}++`: the prefix is possessive, so a non-letter taken as prefix is
    // never given back; without a letter after it the alternative fails.
    if (c.cls & kLetter) return t.run(i + c.len, kLetter);
    if (!(c.cls & (kNumber | kNewline))) {
      const Char next = t.peek(i + c.len);
      if (next.cls & kLetter) return t.run(i + c.len + next.len, kLetter);
    }
    if (c.cls & kNumber) return digits_1_to_3(t, i, c);  // \p{N}{1,3}+
    // ` ?[^\s\p{L}\p{N}]++[\r\n]*+`
    const size_t start = optional_space(t, i, kOther, &c);
    if (c.cls & kOther) return t.run(t.run(start + c.len, kOther), kNewline);
    // c is \s.
    const SpaceRun r = space_run(t, i);
    if (r.end == t.size()) return r.end;          // \s++$
    if (r.newline_end) return r.newline_end;      // \s*[\r\n]: backtracks to the last newline
    return space_backoff(r, i);
  }
};

// ==== o200k ====
// [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
// |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
// |\p{N}{1,3}
// | ?[^\s\p{L}\p{N}]+[\r\n/]*
// |\s*[\r\n]+
// |\s+(?!\S)
// |\s+
// Nothing is possessive, so the first two alternatives backtrack: over the optional prefix, and
// between the "upper" run and the "lower" run (the classes share Lm, Lo and M).

struct O200k {
  // `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at i.
  static size_t suffix(const Text& t, size_t i) {
    if (t.peek(i).cp != '\'') return i;
    const size_t e = contraction<true>(t, i);
    return e ? e : i;
  }

  // The first two alternatives after the prefix choice, from j: `upper* lower+` and, when
  // `try_second`, then `upper+ lower*`. Returns the end (suffix included) or 0 if neither matches.
  static size_t word(const Text& t, size_t j, bool try_second) {
    // upper* is greedy: take the whole run, remembering where its last "lower" member ends.
    size_t upper_end = j, last_lower_end = 0;
    for (Char c = t.peek(j); c.cls & kUpper; c = t.peek(upper_end)) {
      upper_end += c.len;
      if (c.cls & kLower) last_lower_end = upper_end;
    }
    size_t end;
    const Char next = t.peek(upper_end);
    if (next.cls & kLower) {
      // lower+ matches right after the full upper run (next is Ll, the only lower that is not upper).
      end = t.run(upper_end + next.len, kLower);
    } else if (last_lower_end) {
      // Backtrack upper* to the last code point that is also lower (Lm/Lo/M); lower+ takes just it,
      // since what follows it is Lu/Lt or not a letter.
      end = last_lower_end;
    } else if (try_second && upper_end > j) {
      end = upper_end;  // `upper+ lower*`, lower* empty: next is not Ll
    } else {
      return 0;
    }
    return suffix(t, end);
  }

  static size_t next(const Text& t, size_t i) {
    Char c = t.peek(i);
    if (!(c.cls & (kLetter | kNumber | kNewline))) {
      // c can be the optional prefix `[^\r\n\p{L}\p{N}]?`, tried first with it taken. If c is a mark
      // the first alternative then succeeds without the prefix (c itself is "lower"), before the
      // second alternative is tried at all.
      const bool mark = c.cls & kMark;
      if (size_t e = word(t, i + c.len, !mark)) return e;
      if (mark) return word(t, i, false);
    } else if (c.cls & kLetter) {
      return word(t, i, true);  // a letter is "upper" or "lower", so this matches
    }
    if (c.cls & kNumber) return digits_1_to_3(t, i, c);  // \p{N}{1,3}
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    const size_t start = optional_space(t, i, kOther, &c);
    if (c.cls & kOther) return t.run(t.run(start + c.len, kOther), kNewline | kSlash);
    // c is \s.
    const SpaceRun r = space_run(t, i);
    if (r.newline_end) return r.newline_end;      // \s*[\r\n]+: backtracks to the last newline
    if (r.end == t.size()) return r.end;          // \s+(?!\S) at the end of the text
    return space_backoff(r, i);                   // \s+(?!\S)|\s+
  }
};

// ==== The Pretokenizer wrapper ====

template <class Scanner>
class BuiltinPretokenizer final : public Pretokenizer {
 public:
  explicit BuiltinPretokenizer(std::string_view name) : name_(name) {}

  void split(std::string_view text, std::vector<Span>& out) const override {
    const Text t(text);
    // Every scanner consumes at least one byte per piece, so this terminates and covers every byte.
    for (size_t i = 0; i < t.size();) {
      const size_t end = Scanner::next(t, i);
      out.emplace_back(i, end);
      i = end;
    }
  }

  const std::string& pattern() const override { return name_; }

  // At a ' ' between two letters (\p{L}): every pattern's pieces with a letter are runs of letters, marks or
  // digits, which end before the space, and at the space the letters' alternative matches " y..." whatever came
  // before.
  size_t cut_at_or_after(std::string_view text, size_t from, size_t to) const override {
    const Text t(text);
    const size_t end = text.empty() ? 0 : std::min(to, text.size() - 1);  // a cut needs a byte after the space
    for (size_t i = std::max<size_t>(from, 1); i < end; ++i) {
      const void* space = std::memchr(text.data() + i, ' ', end - i);
      if (space == nullptr) break;
      i = static_cast<size_t>(static_cast<const char*>(space) - text.data());
      size_t start = i - 1;  // of the code point before the space
      while (start > 0 && i - start < 4 && is_continuation(static_cast<uint8_t>(text[start]))) --start;
      const Char before = t.peek(start);
      if (start + before.len == i && (before.cls & kLetter) && (t.peek(i + 1).cls & kLetter)) return i;
    }
    return text.size();
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Pretokenizer> make_pretokenizer(std::string_view pattern) {
  if (pattern == "gpt2" || pattern == "r50k" || pattern == "p50k")
    return std::make_unique<BuiltinPretokenizer<Gpt2>>(pattern);
  if (pattern == "cl100k") return std::make_unique<BuiltinPretokenizer<Cl100k>>(pattern);
  if (pattern == "o200k") return std::make_unique<BuiltinPretokenizer<O200k>>(pattern);
  return make_regex_pretokenizer(pattern);
}

}  // namespace fastllm
