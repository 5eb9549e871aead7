// Internals of the regex engine; regex.h is its public face. The files that share these types:
//   regex_charset.cpp   character classes, Unicode properties (regex_categories.h), case folding
//   regex_parse.cpp     pattern -> syntax tree (Node)
//   regex_compile.cpp   syntax tree -> Program, and the first-character analysis
//   regex.cpp           the backtracking matcher and the Pretokenizer built on it
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fastllm::rx {

// ==== UTF-8 ====

// An invalid UTF-8 byte is read as this one "code point": it has no general category, is not
// white space nor a word character, equals no literal, and so matches only `.`, negated classes
// (`[^a]`, `\S`, `\P{L}`, ...) and nothing else.
constexpr uint32_t kInvalidCp = 0x110000;

// The code point starting at s[i] (i < n); its length in bytes goes to *len. Overlong forms,
// surrogates, values past U+10FFFF and truncated sequences are invalid: the first byte is one
// kInvalidCp of length 1 and decoding resumes at the next byte.
inline uint32_t decode_utf8(const uint8_t* s, size_t n, size_t i, size_t* len) {
  const uint32_t b0 = s[i];
  *len = 1;
  if (b0 < 0x80) return b0;
  size_t need;
  uint32_t cp, min;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1, cp = b0 & 0x1F, min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F, min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07, min = 0x10000;
  } else {
    return kInvalidCp;
  }
  if (n - i <= need) return kInvalidCp;  // truncated
  for (size_t k = 1; k <= need; ++k) {
    const uint32_t b = s[i + k];
    if ((b & 0xC0) != 0x80) return kInvalidCp;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalidCp;
  *len = need + 1;
  return cp;
}

// The start of the code point that ends at s[i] (0 < i <= n), consistent with decode_utf8: a
// valid sequence of k bytes ending at i can only start at a lead byte, and a lead byte always
// starts a code point in a forward decode, so checking k = 2, 3, 4 suffices.
inline size_t prev_boundary(const uint8_t* s, size_t n, size_t i) {
  for (size_t k = 2; k <= 4 && k <= i; ++k) {
    size_t len;
    if (s[i - k] >= 0xC2 && decode_utf8(s, n, i - k, &len) != kInvalidCp && len == k) return i - k;
  }
  return i - 1;
}

// ==== Unicode properties (regex_charset.cpp) ====

// General categories, one bit each in a category mask. kNoCategory is the "category" of kInvalidCp.
enum Category : uint8_t {
  kLu, kLl, kLt, kLm, kLo, kMn, kMc, kMe, kNd, kNl, kNo, kPc, kPd, kPs, kPe, kPi, kPf, kPo,
  kSm, kSc, kSk, kSo, kZs, kZl, kZp, kCc, kCf, kCs, kCo, kCn, kNoCategory
};
Category category_of(uint32_t cp);
bool is_white_space(uint32_t cp);  // Unicode White_Space: what \s matches (Rust regex, Python regex)
bool is_word_char(uint32_t cp);    // \w: Alphabetic + Mark + Decimal_Number + Connector_Punctuation + Join_Control

// ==== Character classes ====

// A set of code points: the union of ranges, general categories, White_Space, \w and the
// complements of nested sets (`[\S\d]`), optionally complemented as a whole. finalize() must run
// after the last change and before contains().
class CharSet {
 public:
  void add_range(uint32_t lo, uint32_t hi);
  void add(uint32_t cp) { add_range(cp, cp); }
  void add_categories(uint32_t mask) { categories_ |= mask; }
  void add_white_space() { white_space_ = true; }
  void add_word() { word_ = true; }
  void add_complement_of(CharSet set);  // adds every code point that `set` does not hold
  void add_all(const CharSet& set);     // union, in place
  void negate() { negated_ = !negated_; }
  // Adds, for every member, all code points that match it under Unicode simple case folding
  // (`(?i)`). It closes the set as it is before its whole-set negation, as Rust and Python do:
  // `(?i)[^k]` matches neither k, K nor U+212A KELVIN SIGN.
  void case_fold_closure();
  void finalize();

  bool contains(uint32_t cp) const {
    if (cp < 128) return (ascii_[cp >> 6] >> (cp & 63)) & 1;
    return contains_slow(cp) != negated_;
  }
  // May hold a code point >= 128 (false only when it surely does not); used by the start filter.
  bool may_hold_non_ascii() const;
  uint64_t ascii_word(int k) const { return ascii_[k]; }

 private:
  bool contains_slow(uint32_t cp) const;  // before whole-set negation
  static uint8_t flags_for(uint32_t categories, bool white_space);
  std::vector<std::pair<uint32_t, uint32_t>> ranges_;  // sorted and merged by finalize()
  std::vector<CharSet> complements_;
  uint32_t categories_ = 0;
  bool white_space_ = false, word_ = false, negated_ = false;
  uint8_t fast_flags_ = 0;  // unicode_tables.h flags standing for categories_ and white_space_, or 0
  uint64_t ascii_[2] = {0, 0};  // the answer for code points < 128, negation applied
};

// The Unicode simple case folding orbit of cp: every code point that matches cp under (?i),
// cp included, sorted (e.g. k -> {K, k, U+212A KELVIN SIGN}).
std::vector<uint32_t> case_orbit(uint32_t cp);

// Parses a property name as in \p{...} (loose matching: case, spaces, '_' and '-' ignored):
// general categories by short or long name ("L", "Letter", "gc=Lu"), "Any", "ASCII",
// "White_Space". Returns false for a name it does not know.
bool property_set(std::string_view name, CharSet* out);

// ==== The syntax tree (regex_parse.cpp) ====

struct Node;
// Parses `pattern` into a tree; character classes go to *sets (Node::set indexes them). Throws
// std::invalid_argument naming the position and the problem.
Node parse(std::string_view pattern, std::vector<CharSet>* sets);
// The length in code points of every match of n, or -1 if it varies (lookbehind needs a fixed one).
long fixed_width(const Node& n);

// ==== The program ====

enum class Op : uint8_t {
  kChar,        // x: code point to match
  kSet,         // x: set index
  kRepeat,      // x: set index; min, max; mode: a single-character loop, no frame per character.
                // y: 1 + the memo point right after it, or 0
  kSplit,       // try x; on failure y (a frame holds y); first[x], first[y] skip a hopeless branch
  kBranch,      // x: index into Program::branches: try each branch in order (an alternation)
  kJmp,         // goto x
  kAssert,      // x: AssertKind
  kMark,        // reg x := (stack depth, position): entry of an atomic group or lookaround
  kCut,         // drop every frame pushed since kMark x: the group's choices are forgotten
  kRestorePos,  // position := the one kMark x saved (end of a positive lookahead)
  kCheckAt,     // fail unless position == the one kMark x saved (end of a lookbehind body)
  kBack,        // step back x code points, fail at the text start (start of a lookbehind body)
  kPush,        // push a frame that resumes at x with the current position (negative lookaround)
  kSavePos,     // reg x := position: start of an iteration of a loop whose body can match empty
  kProgress,    // if position == reg x the iteration matched nothing: leave the loop, goto y
  kMemo,        // x: memo point; fail if this (x, position) already failed (see regex.cpp).
                // y: 1 + the register of the innermost guarded loop around it, or 0
  kFail,        // ends the body of a negative lookaround: the body matched, the assertion fails
  kMatch,
};

enum AssertKind : uint32_t {
  kStartText,   // ^ \A
  kEndText,     // $ \z   (Rust: end of text only; Python's $ would also match before a final \n)
  kStartLine,   // (?m)^
  kEndLine,     // (?m)$
  kWordB,       // \b
  kNotWordB,    // \B
  kEndTextNl,   // \Z as fancy-regex defines it: only \n remain, i.e. (?=\n*\z)
};

enum RepeatMode : uint8_t { kGreedy, kLazy, kPossessive };

constexpr uint32_t kInfinite = UINT32_MAX;

struct Inst {
  Op op;
  uint8_t mode = 0;
  uint32_t x = 0, y = 0;
  uint32_t min = 0, max = 0;
};

// The syntax tree. A group is its content; an empty kConcat is the empty regex.
struct Node {
  enum Kind : uint8_t { kChar, kSet, kConcat, kAlt, kRepeat, kAtomic, kLook, kAssert };
  explicit Node(Kind k = kConcat) : kind(k) {}
  Kind kind;
  uint32_t cp = 0;                     // kChar
  uint32_t set = 0;                    // kSet
  uint32_t min = 0, max = 0;           // kRepeat (max may be kInfinite)
  RepeatMode mode = kGreedy;           // kRepeat
  bool negate = false, behind = false;  // kLook
  uint32_t assertion = 0;              // kAssert: an AssertKind
  std::vector<Node> kids;              // kConcat, kAlt: any number; kRepeat, kAtomic, kLook: one
};

// Which next characters could let a path starting at some instruction succeed: an ASCII bitmap,
// "some code point >= 128 (or an invalid byte)", and "the end of the text". Conservative.
struct FirstSet {
  uint64_t ascii[2] = {0, 0};
  bool other = false, end = false;
  bool admits(const uint8_t* s, size_t n, size_t pos) const {
    if (pos == n) return end;
    const uint8_t b = s[pos];
    return b < 128 ? (ascii[b >> 6] >> (b & 63)) & 1 : other;
  }
};

// An alternation of up to 64 branches, dispatched on the next character: bit b of a mask says that
// branch b could start with it (from the first-sets), so the matcher jumps straight to the first
// candidate and keeps the others in one frame.
struct Branches {
  std::vector<uint32_t> targets;
  uint64_t ascii[128] = {};
  uint64_t other = 0, end = 0;
  uint64_t candidates(const uint8_t* s, size_t n, size_t pos) const {
    return pos == n ? end : s[pos] < 128 ? ascii[s[pos]] : other;
  }
};

struct Program {
  std::vector<Inst> insts;
  std::vector<Branches> branches;
  std::vector<CharSet> sets;
  std::vector<FirstSet> first;  // first[pc] for every pc
  uint32_t num_regs = 0;
  uint32_t num_memos = 0;
};

// Compiles `pattern`; throws std::invalid_argument naming the position and the problem.
Program compile(std::string_view pattern);

}  // namespace fastllm::rx
