// Regex parser: pattern text -> syntax tree (Node). The syntax is fancy-regex's (what tiktoken
// runs), which for the tokenizer patterns in the wild is also Python `regex`'s. regex_compile.cpp
// turns the tree into a Program.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "regex_impl.h"

namespace fastllm::rx {

namespace {

constexpr int kMaxDepth = 200;            // nested groups; keeps the recursive parser off the stack limit
constexpr uint32_t kMaxRepeat = 100000;   // {n,m} bounds; the compiled size is capped separately

bool is_hex(uint32_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
uint32_t hex_value(uint32_t c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }
bool is_alnum(uint32_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'); }

class Parser {
 public:
  Parser(std::string_view pattern, std::vector<CharSet>* sets) : p_(pattern), sets_(sets) {}

  Node parse() {
    Node root = parse_alt();
    if (i_ < p_.size()) fail(i_, "unmatched ')'");
    return root;
  }

 private:
  struct Flags {
    bool casei = false, multi_line = false, dot_nl = false, verbose = false, swap_greed = false;
  };

  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    size_t cut = std::min<size_t>(p_.size(), 200);
    while (cut < p_.size() && (static_cast<uint8_t>(p_[cut]) & 0xC0) == 0x80) --cut;  // keep UTF-8 whole
    std::string shown(p_.substr(0, cut));
    if (cut < p_.size()) shown += "...";
    throw std::invalid_argument("invalid regex at position " + std::to_string(pos) + ": " + what + " (pattern: " +
                                shown + ")");
  }

  bool at_end() const { return i_ >= p_.size(); }
  char peek(size_t ahead = 0) const { return i_ + ahead < p_.size() ? p_[i_ + ahead] : '\0'; }

  // The next code point of the pattern, consumed.
  uint32_t next_cp() {
    size_t len;
    const auto* s = reinterpret_cast<const uint8_t*>(p_.data());
    const uint32_t cp = decode_utf8(s, p_.size(), i_, &len);
    if (cp == kInvalidCp) fail(i_, "the pattern is not valid UTF-8");
    i_ += len;
    return cp;
  }

  // (?x): white space and #-comments between tokens mean nothing.
  void skip_verbose() {
    if (!flags_.verbose) return;
    while (!at_end()) {
      const char c = peek();
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
        ++i_;
      } else if (c == '#') {
        while (!at_end() && peek() != '\n') ++i_;
      } else {
        break;
      }
    }
  }

  uint32_t add_set(CharSet set) {
    set.finalize();
    sets_->push_back(std::move(set));
    return static_cast<uint32_t>(sets_->size() - 1);
  }

  Node set_node(CharSet set, bool fold) {
    if (fold) set.case_fold_closure();
    Node n(Node::kSet);
    n.set = add_set(std::move(set));
    return n;
  }

  Node literal(uint32_t cp) {
    if (flags_.casei) {
      std::vector<uint32_t> orbit = case_orbit(cp);
      if (orbit.size() > 1) {
        CharSet set;
        for (uint32_t c : orbit) set.add(c);
        return set_node(std::move(set), false);
      }
    }
    Node n(Node::kChar);
    n.cp = cp;
    return n;
  }

  Node parse_alt() {
    std::vector<Node> branches;
    branches.push_back(parse_concat());
    while (peek() == '|') {
      ++i_;
      branches.push_back(parse_concat());
    }
    if (branches.size() == 1) return std::move(branches[0]);
    Node n(Node::kAlt);
    n.kids = std::move(branches);
    return n;
  }

  Node parse_concat() {
    Node seq(Node::kConcat);
    for (;;) {
      skip_verbose();
      if (at_end() || peek() == '|' || peek() == ')') break;
      bool repeatable = true;
      Node atom;
      if (!parse_atom(&atom, &repeatable)) continue;  // a flag group or a comment: no atom
      parse_quantifiers(&atom, repeatable);
      seq.kids.push_back(std::move(atom));
    }
    if (seq.kids.size() == 1) return std::move(seq.kids[0]);
    return seq;
  }

  // {n}, {n,}, {n,m} or {,m} at i_; false (nothing consumed) if it is not one, and the '{' is then
  // a literal, as in fancy-regex and Python.
  bool parse_braces(uint32_t* lo, uint32_t* hi) {
    size_t j = i_ + 1;
    auto number = [&](uint32_t* out) {
      const size_t from = j;
      uint64_t v = 0;
      while (j < p_.size() && p_[j] >= '0' && p_[j] <= '9') {
        v = std::min<uint64_t>(v * 10 + static_cast<uint64_t>(p_[j] - '0'), uint64_t{kMaxRepeat} + 1);
        ++j;
      }
      *out = static_cast<uint32_t>(v);
      return j > from;
    };
    const bool has_lo = number(lo);
    if (!has_lo) *lo = 0;
    if (j < p_.size() && p_[j] == '}') {
      if (!has_lo) return false;
      *hi = *lo;
    } else if (j < p_.size() && p_[j] == ',') {
      ++j;
      if (!number(hi)) {
        if (!has_lo) return false;  // "{,}" is literal text
        *hi = kInfinite;
      }
      if (j >= p_.size() || p_[j] != '}') return false;
    } else {
      return false;
    }
    if ((*lo > kMaxRepeat) || (*hi != kInfinite && *hi > kMaxRepeat))
      fail(i_, "repetition count above " + std::to_string(kMaxRepeat));
    if (*hi < *lo) fail(i_, "repetition {n,m} with m < n");
    i_ = j + 1;
    return true;
  }

  void parse_quantifiers(Node* atom, bool repeatable) {
    skip_verbose();
    if (at_end()) return;
    const size_t q = i_;
    uint32_t lo, hi;
    const char c = peek();
    if (c == '*') {
      lo = 0, hi = kInfinite, ++i_;
    } else if (c == '+') {
      lo = 1, hi = kInfinite, ++i_;
    } else if (c == '?') {
      lo = 0, hi = 1, ++i_;
    } else if (c != '{' || !parse_braces(&lo, &hi)) {
      return;
    }
    if (!repeatable) fail(q, "a quantifier cannot follow an assertion or lookaround");
    RepeatMode mode = kGreedy;
    if (peek() == '?') {
      mode = kLazy, ++i_;
    } else if (peek() == '+') {
      mode = kPossessive, ++i_;
    }
    if (flags_.swap_greed && mode != kPossessive) mode = mode == kGreedy ? kLazy : kGreedy;
    skip_verbose();
    if (peek() == '*' || peek() == '+' || peek() == '?') fail(i_, "multiple repeat: nothing to repeat");
    Node rep(Node::kRepeat);
    rep.min = lo, rep.max = hi, rep.mode = mode;
    rep.kids.push_back(std::move(*atom));
    *atom = std::move(rep);
  }

  // One atom at i_. Returns false when the text there is no atom (a flag group or a comment).
  bool parse_atom(Node* out, bool* repeatable) {
    const size_t start = i_;
    const char c = peek();
    switch (c) {
      case '(':
        return parse_group(out, repeatable);
      case '[':
        *out = parse_class();
        return true;
      case '.': {
        ++i_;
        CharSet dot;
        if (!flags_.dot_nl) dot.add('\n');
        dot.negate();
        *out = set_node(std::move(dot), false);
        return true;
      }
      case '^':
      case '$':
        ++i_;
        *out = Node(Node::kAssert);
        out->assertion = c == '^' ? (flags_.multi_line ? kStartLine : kStartText)
                                  : (flags_.multi_line ? kEndLine : kEndText);
        *repeatable = false;
        return true;
      case '\\':
        *out = parse_escape(repeatable);
        return true;
      case '*':
      case '+':
      case '?':
        fail(start, std::string("quantifier '") + c + "' has nothing to repeat");
      default:
        *out = literal(next_cp());
        return true;
    }
  }

  bool parse_group(Node* out, bool* repeatable) {
    const size_t open = i_;
    const Flags outer = flags_;  // (?i:...) and an inline (?i) inside change them up to ')' only
    ++i_;  // '('
    if (++depth_ > kMaxDepth) fail(open, "groups nested deeper than " + std::to_string(kMaxDepth));
    Node::Kind kind = Node::kConcat;  // a plain group: its content is the node
    bool negate = false, behind = false;
    if (peek() == '?') {
      ++i_;
      const char c = peek();
      if (c == '#') {  // (?#comment)
        while (!at_end() && peek() != ')') ++i_;
        if (at_end()) fail(open, "unclosed comment group");
        ++i_, --depth_;
        return false;
      }
      if (c == ':') {
        ++i_;
      } else if (c == '>') {
        kind = Node::kAtomic, ++i_;
      } else if (c == '=' || c == '!') {
        kind = Node::kLook, negate = c == '!', ++i_;
      } else if (c == '<' && (peek(1) == '=' || peek(1) == '!')) {
        kind = Node::kLook, behind = true, negate = peek(1) == '!', i_ += 2;
      } else if (c == 'P' && peek(1) == '<') {
        skip_group_name(open, '>', 2);
      } else if (c == '<') {
        skip_group_name(open, '>', 1);
      } else if (c == '\'') {
        skip_group_name(open, '\'', 1);
      } else if (c == 'P' && (peek(1) == '=' || peek(1) == '>')) {
        fail(open, "backreferences and subroutine calls are not supported");
      } else if (c == '(') {
        fail(open, "conditionals are not supported");
      } else if (!parse_flags(open)) {
        --depth_;
        return false;  // (?flags): they apply to the rest of the enclosing group
      }
    }
    Node body = parse_alt();
    flags_ = outer;
    if (peek() != ')') fail(open, "unclosed group");
    if (behind && fixed_width(body) < 0)
      fail(open, "lookbehind must have a fixed length (as in fancy-regex)");
    ++i_, --depth_;
    if (kind == Node::kConcat) {
      *out = std::move(body);
      return true;
    }
    Node n(kind);
    n.negate = negate, n.behind = behind;
    n.kids.push_back(std::move(body));
    *repeatable = kind != Node::kLook;
    *out = std::move(n);
    return true;
  }

  void skip_group_name(size_t open, char close, size_t skip) {
    i_ += skip;
    const size_t from = i_;
    while (!at_end() && (is_alnum(static_cast<uint8_t>(peek())) || peek() == '_')) ++i_;
    if (i_ == from || peek() != close) fail(open, "invalid group name");
    ++i_;
  }

  // After "(?": flags like "i", "im-s", then ')' (returns false: scoped to the enclosing group)
  // or ':' (returns true: scoped to this group, which the caller parses).
  bool parse_flags(size_t open) {
    bool on = true;
    for (;;) {
      if (at_end()) fail(open, "unclosed flag group");
      const char c = p_[i_++];
      switch (c) {
        case 'i': flags_.casei = on; break;
        case 'm': flags_.multi_line = on; break;
        case 's': flags_.dot_nl = on; break;
        case 'x': flags_.verbose = on; break;
        case 'U': flags_.swap_greed = on; break;
        case 'u': break;  // Unicode is always on
        case '-':
          if (!on) fail(i_ - 1, "two '-' in a flag group");
          if (peek() == ')' || peek() == ':') fail(i_ - 1, "no flag after '-'");
          on = false;
          break;
        case ')': return false;
        case ':': return true;
        default: fail(i_ - 1, std::string("unknown or unsupported group syntax or flag '") + c + "'");
      }
    }
  }

  // A class shorthand (\d \s \w \h and their negations, \p{..}, \P{..}) at i_ (past the
  // backslash, on the letter). Returns false if the letter is not one.
  bool parse_class_escape(CharSet* out) {
    const char c = peek();
    const size_t at = i_ - 1;
    CharSet s;
    switch (c | 0x20) {
      case 'd': s.add_categories(1u << kNd); break;
      case 's': s.add_white_space(); break;
      case 'w': s.add_word(); break;
      case 'h': s.add_range('0', '9'), s.add_range('a', 'f'), s.add_range('A', 'F'); break;  // fancy-regex
      case 'p': {
        ++i_;
        std::string_view name;
        if (peek() == '{') {
          const size_t close = p_.find('}', i_);
          if (close == std::string_view::npos) fail(at, "unclosed \\p{...}");
          name = p_.substr(i_ + 1, close - i_ - 1);
          i_ = close + 1;
        } else {
          if (at_end()) fail(at, "\\p at the end of the pattern");
          name = p_.substr(i_, 1);
          ++i_;
        }
        bool neg = c == 'P';
        if (!name.empty() && name[0] == '^') neg = !neg, name.remove_prefix(1);  // Python's \p{^L}
        if (!property_set(name, &s)) fail(at, "unknown or unsupported Unicode property '" + std::string(name) + "'");
        if (flags_.casei) s.case_fold_closure();
        if (neg) s.negate();
        *out = std::move(s);
        return true;
      }
      default: return false;
    }
    ++i_;
    if (flags_.casei) s.case_fold_closure();
    if (c >= 'A' && c <= 'Z') s.negate();
    *out = std::move(s);
    return true;
  }

  // A single-character escape at i_ (past the backslash). Fails for what is not one.
  uint32_t parse_char_escape(bool in_class) {
    const size_t at = i_ - 1;
    if (at_end()) fail(at, "trailing backslash");
    const uint32_t c = next_cp();
    switch (c) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'f': return '\f';
      case 'v': return '\v';
      case 'a': return 0x07;
      case 'e': return 0x1B;
      case 'b':
        if (in_class) return 0x08;
        break;
      case 'x':
      case 'u':
      case 'U': {
        uint32_t v = 0;
        if (peek() == '{') {  // \x{...}, \u{...}: Rust
          const size_t close = p_.find('}', i_);
          if (close == std::string_view::npos || close == i_ + 1 || close - i_ - 1 > 8)
            fail(at, "bad \\x{...} escape");
          for (size_t k = i_ + 1; k < close; ++k) {
            if (!is_hex(static_cast<uint8_t>(p_[k]))) fail(at, "bad hex digit in escape");
            v = v * 16 + hex_value(static_cast<uint8_t>(p_[k]));
          }
          i_ = close + 1;
        } else {
          const size_t digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
          for (size_t k = 0; k < digits; ++k) {
            if (!is_hex(static_cast<uint8_t>(peek()))) fail(at, "escape needs " + std::to_string(digits) + " hex digits");
            v = v * 16 + hex_value(static_cast<uint8_t>(p_[i_++]));
          }
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail(at, "escape is not a Unicode scalar value");
        return v;
      }
      default:
        break;
    }
    if (c >= '0' && c <= '9') fail(at, "backreferences and octal escapes are not supported");
    if (c < 128 && is_alnum(c)) fail(at, std::string("unknown or unsupported escape '\\") + static_cast<char>(c) + "'");
    return c;  // an escaped symbol stands for itself: \. \' \\ \- \  ...
  }

  Node parse_escape(bool* repeatable) {
    ++i_;  // '\\'
    CharSet set;
    if (parse_class_escape(&set)) return set_node(std::move(set), false);
    Node n(Node::kAssert);
    switch (peek()) {
      case 'A': n.assertion = kStartText; break;
      case 'z': n.assertion = kEndText; break;
      case 'Z': n.assertion = kEndTextNl; break;
      case 'b': n.assertion = kWordB; break;
      case 'B': n.assertion = kNotWordB; break;
      default:
        return literal(parse_char_escape(false));
    }
    ++i_;
    *repeatable = false;
    return n;
  }

  // One class item's single character; false when the item is a class shorthand (stored in *set).
  bool parse_class_item(uint32_t* cp, CharSet* set) {
    if (peek() != '\\') {
      *cp = next_cp();
      return true;
    }
    ++i_;
    if (parse_class_escape(set)) return false;
    *cp = parse_char_escape(true);
    return true;
  }

  Node parse_class() {
    const size_t open = i_;
    ++i_;  // '['
    CharSet set;
    bool negated = false;
    if (peek() == '^') negated = true, ++i_;
    for (bool first = true;; first = false) {
      if (at_end()) fail(open, "unclosed character class");
      const char c = peek();
      if (c == ']' && !first) {
        ++i_;
        break;
      }
      // Rust reads these as nested classes or set operations, Python as plain characters; rather
      // than pick one silently, ask for an escape.
      if (c == '[') fail(i_, "'[' inside a class is ambiguous (nested class in Rust, literal in Python): write \\[");
      if ((c == '&' || c == '~' || (c == '-' && !first)) && peek(1) == c)
        fail(i_, std::string("'") + c + c + "' inside a class is ambiguous (a set operation in Rust): escape it");
      uint32_t lo;
      CharSet item;
      if (!parse_class_item(&lo, &item)) {
        set.add_all(item);
        continue;
      }
      if (peek() == '-' && peek(1) != ']' && i_ + 1 < p_.size()) {
        const size_t dash = i_;
        ++i_;
        uint32_t hi;
        if (!parse_class_item(&hi, &item)) fail(dash, "a class shorthand cannot end a range");
        if (hi < lo) fail(dash, "range out of order in character class");
        set.add_range(lo, hi);
      } else {
        set.add(lo);
      }
    }
    if (flags_.casei) set.case_fold_closure();
    if (negated) set.negate();
    return set_node(std::move(set), false);
  }

  std::string_view p_;
  std::vector<CharSet>* sets_;
  size_t i_ = 0;
  int depth_ = 0;
  Flags flags_;
};

}  // namespace

Node parse(std::string_view pattern, std::vector<CharSet>* sets) { return Parser(pattern, sets).parse(); }

}  // namespace fastllm::rx
