// Reading a Hugging Face tokenizer.json with a byte-level BPE model: one strict-JSON pass over the mapped
// file decodes model.vocab and model.merges (the bulk of it) and leaves the rest as JSON text for
// fastllm/_tokenizer_json.py to check; CoreBPE::from_tokenizer_json then resolves the merges.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bpe.h"
#include "bpe_backtrack.h"  // complete types for CoreBPE's members (from_tokenizer_json builds one)
#include "hash.h"
#include "vocab_io.h"

namespace fastllm {

namespace {

// The length of the valid UTF-8 sequence at p (lead byte >= 0x80, `avail` bytes readable), or 0: no
// overlong forms, surrogates or code points past U+10FFFF, as Python's decoder.
size_t utf8_len(const char* p, size_t avail) {
  auto b = [p](size_t k) { return static_cast<unsigned char>(p[k]); };
  auto cont = [&](size_t k) { return k < avail && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2) || (c == 0xE0 && b(1) < 0xA0) || (c == 0xED && b(1) >= 0xA0)) return 0;
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3) || (c == 0xF0 && b(1) < 0x90) || (c == 0xF4 && b(1) >= 0x90)) return 0;
    return 4;
  }
  return 0;
}

uint32_t utf8_decode(const char* p, size_t len) {
  auto b = [p](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(p[k])); };
  if (len == 2) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (len == 3) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

int bytelevel_byte(uint32_t cp) { return cp < 512 ? kAlphabet.from_cp[cp] : -1; }

// One pass over the document: validates all of it as strict JSON, decodes the top-level model's vocab
// and merges, and notes where they lie so that `rest` can leave them out. About 1 GB/s: the hot loops
// keep their position in locals (a store through char* would make the compiler reload members).
class TokenizerJsonReader {
 public:
  TokenizerJsonReader(const std::string& path, std::string_view text)
      : path_(path), s_(text), end_(text.data() + text.size()) {}

  TokenizerJson read() {
    if (s_.size() >= TokenizerJson::Merge::kList) throw BpeError(path_ + ": the file is 2 GB or larger");
    skip_ws();
    if (peek() == '{') top_object();
    else value(0);
    skip_ws();
    if (i_ != s_.size()) error("extra data after the JSON value");
    if (merges_pending_) {  // model.merges came before model.vocab
      i_ = merges_span_.first;
      merges();
    }
    std::pair<size_t, size_t> cuts[2] = {vocab_span_, merges_span_};
    if (cuts[1].first < cuts[0].first) std::swap(cuts[0], cuts[1]);
    size_t at = 0;
    for (auto [from, to] : cuts) {
      if (to == 0) continue;  // not cut
      out_.rest.append(s_.data() + at, from - at);
      out_.rest += s_[from] == '{' ? "{}" : "[]";
      at = to;
    }
    out_.rest.append(s_.data() + at, s_.size() - at);
    return std::move(out_);
  }

 private:
  using Problem = TokenizerJson::Problem;
  static constexpr int kMaxDepth = 128;  // below Python's recursion limit, which json.loads of `rest` meets

  // ---- errors and position ----
  size_t line_of(size_t at, size_t* line_start = nullptr) const {
    size_t line = 1, start = 0;
    for (size_t k = 0; k < at && k < s_.size(); ++k)
      if (s_[k] == '\n') ++line, start = k + 1;
    if (line_start) *line_start = start;
    return line;
  }
  [[noreturn]] void error(const std::string& what) const {
    size_t start, line = line_of(i_, &start);
    throw BpeError(path_ + ": not valid JSON (line " + std::to_string(line) + " column " +
                   std::to_string(i_ - start + 1) + ": " + (i_ >= s_.size() ? "unexpected end of file" : what) + ")");
  }
  [[noreturn]] void twice(const char* key, const char* where) const {
    throw BpeError(path_ + ": line " + std::to_string(line_of(i_)) + ": \"" + key + "\" appears twice in " + where);
  }
  const char* at() const { return s_.data() + i_; }
  void seek(const char* p) { i_ = static_cast<size_t>(p - s_.data()); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  static bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
  void skip_ws() { seek(skip_ws(at())); }
  const char* skip_ws(const char* p) const {
    while (p < end_ && is_ws(*p)) {
      ++p;
      while (end_ - p >= 8 && load8(p) == 0x2020202020202020ull) p += 8;  // indentation, 8 spaces at a time
    }
    return p;
  }
  static uint64_t load8(const char* p) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  }
  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++i_;
  }
  // After an element of an object or array: true if another follows (then at its first character).
  bool next(char close) {
    skip_ws();
    if (peek() == ',') {
      ++i_;
      skip_ws();
      return true;
    }
    if (peek() != close) error(std::string("expected ',' or '") + close + "'");
    ++i_;
    return false;
  }

  // ---- strings ----
  uint32_t hex4() {
    if (i_ + 4 > s_.size()) error("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) error("bad \\u escape");
      v = v * 16 + static_cast<uint32_t>(d);
      ++i_;
    }
    return v;
  }
  // The code point of the character at i_, inside a string and not its closing quote; advances past it.
  // A lone surrogate escape stands for itself, as in Python.
  uint32_t one_char() {
    if (i_ >= s_.size()) error("unterminated string");
    auto c = static_cast<unsigned char>(s_[i_]);
    if (c >= 0x80) {
      size_t len = utf8_len(at(), s_.size() - i_);
      if (len == 0) error("invalid UTF-8");
      i_ += len;
      return utf8_decode(at() - len, len);
    }
    if (c < 0x20) error("a control character in a string");
    ++i_;
    if (c != '\\') return c;
    if (i_ >= s_.size()) error("unterminated string");
    switch (s_[i_++]) {
      case '"': return '"';
      case '\\': return '\\';
      case '/': return '/';
      case 'b': return '\b';
      case 'f': return '\f';
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'u': break;
      default: --i_, error("bad escape");
    }
    uint32_t cp = hex4();
    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(i_, 2, "\\u") == 0) {
      size_t back = i_;
      i_ += 2;
      uint32_t low = hex4();
      if (low >= 0xDC00 && low < 0xE000) return 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
      i_ = back;
    }
    return cp;
  }
  // At the opening quote: calls on_char(code point) for each character; leaves i_ after the string.
  template <typename OnChar>
  void string(OnChar on_char) {
    ++i_;
    while (true) {
      const char* p = at();  // runs of plain ASCII first
      while (p < end_ && static_cast<unsigned char>(*p) >= 0x20 && *p != '"' && *p != '\\' &&
             static_cast<unsigned char>(*p) < 0x80)
        on_char(static_cast<unsigned char>(*p++));
      seek(p);
      if (p < end_ && *p == '"') {
        ++i_;
        return;
      }
      on_char(one_char());
    }
  }
  void skip_string() {
    string([](uint32_t) {});
  }
  // A string of GPT-2 byte-level characters at i_ (its opening quote), written as the bytes they stand
  // for at dst; returns the new end. A character outside the alphabet clears `ok` and writes nothing;
  // with kSplit, a space (the separator of "left right") writes nothing and sets *split to dst.
  template <bool kSplit>
  char* bytelevel_string(char* dst, bool& ok, size_t* spaces = nullptr, char** split = nullptr) {
    ++i_;
    while (true) {
      const char* p = at();
      while (p < end_) {
        auto c = static_cast<unsigned char>(*p);
        if (c >= '!' && c <= '~' && c != '"' && c != '\\') {  // printable ASCII stands for itself
          *dst++ = static_cast<char>(c);
          ++p;
        } else if (c >= 0xC2 && c <= 0xC7 && p + 1 < end_ && (static_cast<unsigned char>(p[1]) & 0xC0) == 0x80) {
          int b = kAlphabet.from_cp[((c & 0x1Fu) << 6) | (static_cast<unsigned char>(p[1]) & 0x3Fu)];
          if (b < 0) ok = false;
          else *dst++ = static_cast<char>(b);
          p += 2;
        } else {
          break;
        }
      }
      seek(p);
      if (p < end_ && *p == '"') {
        ++i_;
        return dst;
      }
      uint32_t cp = one_char();
      if (kSplit && cp == ' ') {
        ++*spaces;
        *split = dst;
        continue;
      }
      int b = bytelevel_byte(cp);
      if (b < 0) ok = false;
      else *dst++ = static_cast<char>(b);
    }
  }
  // ---- the fast path of model.vocab and model.merges ----
  // Nearly every entry is plain: keys of printable ASCII and two-byte characters of the alphabet, ids
  // of at most 8 digits, "left right" with one space. These read such an entry from p (nullptr for
  // anything else, which the general code then reads from the entry's start, with its messages).

  // A string at p (its opening quote): its bytes at dst; returns the end of the string, *dst_end the end
  // of the bytes; with kSplit, one unescaped space is allowed and *split set to where it was.
  template <bool kSplit>
  const char* fast_string(const char* p, char* dst, char** dst_end, char** split = nullptr) const {
    ++p;
    while (p < end_) {
      auto c = static_cast<unsigned char>(*p);
      if (c >= '!' && c <= '~' && c != '"' && c != '\\') {
        *dst++ = static_cast<char>(c);
        ++p;
      } else if (c == '"') {
        *dst_end = dst;
        return p + 1;
      } else if (c >= 0xC2 && c <= 0xC7 && end_ - p >= 2 && (static_cast<unsigned char>(p[1]) & 0xC0) == 0x80) {
        int b = kAlphabet.from_cp[((c & 0x1Fu) << 6) | (static_cast<unsigned char>(p[1]) & 0x3Fu)];
        if (b < 0) return nullptr;
        *dst++ = static_cast<char>(b);
        p += 2;
      } else if (kSplit && c == ' ' && *split == nullptr) {
        *split = dst;
        ++p;
      } else {
        return nullptr;
      }
    }
    return nullptr;
  }
  // An id at p: 1 to 8 digits without a leading zero, not followed by more of a number.
  const char* fast_id(const char* p, uint32_t* id) const {
    uint32_t v = 0;
    const char* start = p;
    while (p < end_ && *p >= '0' && *p <= '9' && p - start < 8) v = v * 10 + static_cast<uint32_t>(*p++ - '0');
    if (p == start || (*start == '0' && p - start > 1) || p == end_ || (*p >= '0' && *p <= '9') || *p == '.' ||
        *p == 'e' || *p == 'E')
      return nullptr;
    *id = v;
    return p;
  }
  // "key": id
  const char* fast_vocab_entry(const char* p, char* dst, char** dst_end, uint32_t* id) const {
    if (p == end_ || *p != '"' || !(p = fast_string<false>(p, dst, dst_end))) return nullptr;
    p = skip_ws(p);
    if (p == end_ || *p != ':') return nullptr;
    p = skip_ws(p + 1);
    return p < end_ ? fast_id(p, id) : nullptr;
  }
  // ["left", "right"] or "left right"
  const char* fast_merge(const char* p, char* dst, char** split, char** dst_end, bool* list) const {
    *split = nullptr;
    if (p == end_) return nullptr;
    if (*p == '"') {
      *list = false;
      p = fast_string<true>(p, dst, dst_end, split);
      return p && *split ? p : nullptr;
    }
    *list = true;
    if (*p != '[') return nullptr;
    p = skip_ws(p + 1);
    if (p == end_ || *p != '"' || !(p = fast_string<false>(p, dst, split))) return nullptr;
    p = skip_ws(p);
    if (p == end_ || *p != ',') return nullptr;
    p = skip_ws(p + 1);
    if (p == end_ || *p != '"' || !(p = fast_string<false>(p, *split, dst_end))) return nullptr;
    p = skip_ws(p);
    return p < end_ && *p == ']' ? p + 1 : nullptr;
  }

  std::string key_text() {  // a key decoded to UTF-8, to compare with "model", "vocab", "merges"
    if (peek() != '"') error("expected a string key");
    std::string key;
    string([&](uint32_t cp) { append_utf8(cp, key); });
    skip_ws();
    expect(':');
    skip_ws();
    return key;
  }

  // ---- other values ----
  // A number; true if it is a non-negative integer (or -0), its value in *v (UINT64_MAX past 18 digits).
  bool number(uint64_t* v) {
    bool negative = peek() == '-', integer = true;
    if (negative) ++i_;
    auto digits = [&] {
      size_t from = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ - from;
    };
    uint64_t x = 0;
    size_t start = i_, n = digits();
    if (n == 0 || (s_[start] == '0' && n > 1)) i_ = start + (n > 0), error("bad number");
    for (size_t k = start; k < start + n; ++k) x = x * 10 + static_cast<uint64_t>(s_[k] - '0');
    if (n > 18) x = UINT64_MAX;  // (saturated: ids are far smaller)
    if (peek() == '.') {
      ++i_, integer = false;
      if (digits() == 0) error("bad number");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_, integer = false;
      if (peek() == '+' || peek() == '-') ++i_;
      if (digits() == 0) error("bad number");
    }
    *v = x;
    return integer && (!negative || x == 0);
  }
  void literal() {
    for (const char* word : {"true", "false", "null"}) {
      size_t n = std::strlen(word);
      if (s_.compare(i_, n, word) == 0) {
        i_ += n;
        return;
      }
    }
    error("expected a value");
  }
  // Any value, validated and skipped.
  void value(int depth) {
    char c = peek();
    if (c == '"') {
      skip_string();
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxDepth) error("nested deeper than " + std::to_string(kMaxDepth) + " levels");
      ++i_;
      skip_ws();
      char close = c == '{' ? '}' : ']';
      if (peek() == close) {
        ++i_;
        return;
      }
      do {
        if (c == '{') {
          if (peek() != '"') error("expected a string key");
          skip_string();
          skip_ws();
          expect(':');
          skip_ws();
        }
        value(depth);
      } while (next(close));
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      uint64_t v;
      number(&v);
    } else {
      literal();
    }
  }

  // ---- the document ----
  void top_object() {
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    bool seen_model = false;
    do {
      if (key_text() == "model") {
        if (seen_model) twice("model", "the top-level object");
        seen_model = true;
        if (peek() == '{') {
          model();
          continue;
        }
      }
      value(1);
    } while (next('}'));
  }

  void model() {
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    bool seen_vocab = false, seen_merges = false;
    do {
      std::string key = key_text();
      if (key == "vocab") {
        if (seen_vocab) twice("vocab", "model");
        seen_vocab = true;
        if (peek() == '{') {
          vocab_span_.first = i_;
          vocab();
          vocab_span_.second = i_;
          out_.has_vocab = true;
          continue;
        }
      } else if (key == "merges") {
        if (seen_merges) twice("merges", "model");
        seen_merges = true;
        if (peek() == '[') {
          merges_span_.first = i_;
          if (seen_vocab) merges();
          else value(2), merges_pending_ = true;  // decoded at the end (the vocab decides whether to)
          merges_span_.second = i_;
          out_.has_merges = true;
          continue;
        }
      }
      value(2);
    } while (next('}'));
  }

  // model.vocab: byte-level token -> id, decoded to out_.vocab.
  void vocab() {
    // A token's bytes are never more than its JSON text: decode into a buffer of the document's size,
    // left uninitialized (only the pages written are touched), then copy out what was used.
    std::unique_ptr<char[]> buf(new char[s_.size()]);
    char* dst = buf.get();
    Vocab& v = out_.vocab;
    v.tokens.reserve(s_.size() / 6);  // an entry takes 6 bytes or more ("x":0,); unused capacity is never touched
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    do {
      char* end;
      uint32_t fast_id;
      if (const char* p = fast_vocab_entry(at(), dst, &end, &fast_id); p && fast_id <= TokenizerJson::kMaxId) {
        v.tokens.push_back(
            Vocab::Token{static_cast<uint32_t>(dst - buf.get()), static_cast<uint32_t>(end - dst), fast_id});
        dst = end;
        seek(p);
        continue;
      }
      if (peek() != '"') error("expected a string key");
      size_t key_start = i_;
      bool in_alphabet = true;
      char* token_end = bytelevel_string<false>(dst, in_alphabet);
      size_t key_end = i_;
      skip_ws();
      expect(':');
      skip_ws();
      size_t value_start = i_;
      uint64_t id = 0;
      bool is_id = false;
      if (peek() == '-' || (peek() >= '0' && peek() <= '9')) is_id = number(&id);
      else value(3);
      Problem::Kind kind = !is_id                      ? Problem::Kind::kVocabId
                           : id > TokenizerJson::kMaxId ? Problem::Kind::kVocabIdTooLarge
                           : !in_alphabet               ? Problem::Kind::kVocabChar
                                                        : Problem::Kind::kNone;
      if (kind == Problem::Kind::kNone) {
        v.tokens.push_back(Vocab::Token{static_cast<uint32_t>(dst - buf.get()),
                                        static_cast<uint32_t>(token_end - dst), static_cast<uint32_t>(id)});
        dst = token_end;
      } else if (out_.vocab_problem.kind == Problem::Kind::kNone) {
        out_.vocab_problem.kind = kind;  // Python checks the id first, then the characters
        out_.vocab_problem.item = std::string(s_.substr(key_start, key_end - key_start));
        out_.vocab_problem.value = std::string(s_.substr(value_start, i_ - value_start));
      }
    } while (next('}'));
    size_t used = static_cast<size_t>(dst - buf.get());
    v.bytes.reserve(used + 4096);  // CoreBPE adopts the bytes, then appends the specials' text and 16 bytes
    v.bytes.assign(buf.get(), used);
    vocab_ok_ = out_.vocab_problem.kind == Problem::Kind::kNone;
  }

  // model.merges: "left right" or [left, right] entries, decoded to the bytes of their symbols.
  void merges() {
    constexpr uint32_t kList = TokenizerJson::Merge::kList;
    bool keep = vocab_ok_;  // else the vocabulary's problem is reported first: only validate
    out_.merge_bytes.reset(new char[s_.size() + 1]);  // symbols are never longer than their JSON text
    char* const buf = out_.merge_bytes.get();
    char* dst = buf;
    if (keep) out_.merges.reserve(s_.size() / 6);  // as vocab()
    ++i_;
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return;
    }
    size_t n = 0;
    do {
      if (keep && out_.merges_problem.kind == Problem::Kind::kNone) {
        char *split, *end;
        bool list;
        if (const char* p = fast_merge(at(), dst, &split, &end, &list)) {
          out_.merges.push_back(TokenizerJson::Merge{static_cast<uint32_t>(dst - buf),
                                                     static_cast<uint32_t>(split - dst),
                                                     static_cast<uint32_t>(end - split) | (list ? kList : 0)});
          dst = end;
          seek(p);
          ++n;
          continue;
        }
      }
      size_t start = i_, parts = 0, spaces = 0;
      bool shape_ok = true, ok[2] = {true, true}, list = peek() == '[';
      char *split = nullptr, *e = dst;
      if (peek() == '"') {  // "left right", split at spaces (escaped ones too)
        e = bytelevel_string<true>(dst, ok[0], &spaces, &split);
        shape_ok = spaces == 1;
      } else if (list) {
        ++i_;
        skip_ws();
        if (peek() != ']') {
          do {
            if (peek() != '"' || parts >= 2) {
              shape_ok = false;
              value(4);
            } else {
              if (parts == 1) split = e;
              e = bytelevel_string<false>(e, ok[parts]);
            }
            ++parts;
          } while (next(']'));
        } else {
          ++i_;
        }
        shape_ok = shape_ok && parts == 2;
      } else {
        value(3);
        shape_ok = false;
      }
      if (keep && out_.merges_problem.kind == Problem::Kind::kNone) {
        if (shape_ok && ok[0] && ok[1]) {
          out_.merges.push_back(TokenizerJson::Merge{static_cast<uint32_t>(dst - buf),
                                                     static_cast<uint32_t>(split - dst),
                                                     static_cast<uint32_t>(e - split) | (list ? kList : 0)});
          dst = e;
        } else {
          Problem& p = out_.merges_problem;
          p.kind = shape_ok ? Problem::Kind::kMergeUnknown : Problem::Kind::kMergeShape;
          p.index = n;
          p.item = std::string(s_.substr(start, i_ - start));
          p.side = ok[0] ? 1 : 0;
        }
      }
      ++n;
    } while (next(']'));
    out_.merge_bytes_size = static_cast<size_t>(dst - buf);
  }

  const std::string& path_;
  std::string_view s_;
  const char* end_;
  size_t i_ = 0;
  TokenizerJson out_;
  std::pair<size_t, size_t> vocab_span_{0, 0}, merges_span_{0, 0};
  bool vocab_ok_ = false, merges_pending_ = false;
};

std::string bytelevel_text(std::string_view bytes) {
  std::string s;
  for (unsigned char c : bytes) append_utf8(kAlphabet.to_cp[c], s);
  return s;
}

// A file's text, mapped rather than read: a 10 MB read() into fresh memory costs 3-10 ms here, its
// mapping 1.5 ms. Files that cannot be mapped (pipes, empty files) are read.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
      size_ = static_cast<size_t>(st.st_size);
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      if (p != MAP_FAILED) map_ = static_cast<const char*>(p);
    }
    if (fd >= 0) ::close(fd);
    if (map_ == nullptr) read_ = read_file(path);  // and its error messages
  }
  ~MappedFile() {
    if (map_ != nullptr) ::munmap(const_cast<char*>(map_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view text() const { return map_ != nullptr ? std::string_view(map_, size_) : std::string_view(read_); }

 private:
  const char* map_ = nullptr;
  size_t size_ = 0;
  std::string read_;
};

// How Python's repr() writes a str of printable characters (as byte-level text is).
std::string py_repr(const std::string& s) {
  bool single = s.find('\'') != std::string::npos, dbl = s.find('"') != std::string::npos;
  char quote = single && !dbl ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    if (c == '\\' || c == quote) out += '\\';
    out += c;
  }
  return out + quote;
}

}  // namespace

TokenizerJson load_tokenizer_json(const std::string& path) {
  MappedFile file(path);
  return TokenizerJsonReader(path, file.text()).read();
}

std::unique_ptr<CoreBPE> CoreBPE::from_tokenizer_json(TokenizerJson& doc, std::vector<SpecialToken> specials,
                                                      std::string_view pattern, bool ignore_merges) {
  std::unique_ptr<CoreBPE> bpe(new CoreBPE());
  bpe->init_tokens(doc.vocab, specials, pattern);
  doc.vocab = Vocab{};
  using Merge = TokenizerJson::Merge;
  const std::vector<Merge>& list = doc.merges;
  const char* base = doc.merge_bytes.get();
  const size_t n = list.size(), size = doc.merge_bytes_size;
  auto right_len = [](const Merge& m) { return m.right_len & ~Merge::kList; };
  auto fail = [&](size_t i, const std::string& what) {
    const Merge& m = list[i];
    std::string l = bytelevel_text({base + m.off, m.left_len}), r = bytelevel_text({base + m.off + m.left_len, right_len(m)});
    std::string item = m.right_len & Merge::kList ? "[" + py_repr(l) + ", " + py_repr(r) + "]" : py_repr(l + " " + r);
    throw BpeError("model.merges[" + std::to_string(i) + "] = " + item + what);
  };
  Merges merges(n);
  std::vector<uint32_t> made(n);  // the id each merge makes
  // The token a merge makes is nearly always the one after the previous merge's (files list the
  // vocabulary by id and the merges by priority, and training numbers tokens as it merges): checking
  // that guess reads the arena in order. The other lookups, two or three per merge in a table larger
  // than the caches, are hashed a block of merges at a time and their slots prefetched first, so
  // that the misses overlap (as from_merge_text).
  auto makes = [&](uint32_t id, const char* p, size_t len) {
    if (id >= bpe->tokens_.size()) return false;
    const TokenRef& t = bpe->tokens_[id];
    return t.len == len && !t.special && std::memcmp(bpe->arena_.data() + t.off, p, len) == 0;
  };
  constexpr size_t kBlock = 8;
  BytesKey keys[kBlock][3];
  uint32_t guess[kBlock];  // kNoToken: looked up
  uint32_t last = 0;       // the id the previous merge made
  for (size_t b = 0; b < n; b += kBlock) {
    size_t e = std::min(n, b + kBlock);
    for (size_t i = b; i < e; ++i) {
      const Merge& m = list[i];
      size_t avail = size - m.off, len = m.left_len + right_len(m);
      keys[i - b][0] = make_key(base + m.off, m.left_len, avail);
      keys[i - b][1] = make_key(base + m.off + m.left_len, right_len(m), avail - m.left_len);
      bpe->ordinary_.prefetch(keys[i - b][0]);
      bpe->ordinary_.prefetch(keys[i - b][1]);
      guess[i - b] = makes(last + 1, base + m.off, len) ? ++last : kNoToken;
      if (guess[i - b] == kNoToken) {
        keys[i - b][2] = make_key(base + m.off, len, avail);
        bpe->ordinary_.prefetch(keys[i - b][2]);
      }
    }
    for (size_t i = b; i < e; ++i) {
      const Merge& m = list[i];
      std::string_view left(base + m.off, m.left_len), right(base + m.off + m.left_len, right_len(m));
      uint32_t a = bpe->ordinary_.find(left.data(), left.size(), keys[i - b][0]);
      uint32_t c = bpe->ordinary_.find(right.data(), right.size(), keys[i - b][1]);
      if (a == BytesMap::kMissing || c == BytesMap::kMissing) {
        std::string_view missing = a == BytesMap::kMissing ? left : right;
        uint32_t special = bpe->token_to_id(missing);  // an added token also listed in model.vocab
        fail(i, ": " + py_repr(bytelevel_text(missing)) +
                    (special == kNoToken ? " is not in model.vocab" : " is an added token, not an ordinary token"));
      }
      uint32_t id = guess[i - b] != kNoToken
                        ? guess[i - b]
                        : bpe->ordinary_.find(left.data(), left.size() + right.size(), keys[i - b][2]);
      if (id == BytesMap::kMissing) fail(i, " makes a token that is not in model.vocab");
      merges[i] = {a, c};
      made[i] = id;
    }
    last = made[e - 1];
  }
  doc.merges = {};
  doc.merge_bytes.reset();
  // Insert the pairs in the order of their home slots in pairs_ (PairMap hashes with mix64 into a
  // table_capacity(n) table), so that the inserts sweep the table rather than miss the caches once
  // each (a third of the insert time, measured on 233k merges). Stable, so a repeated merge still meets its
  // first occurrence first and keeps its first (highest) priority, as HF does. Any order is correct.
  bpe->pairs_.reset(n);
  const size_t cap = table_capacity(n), shift = 6;  // a bucket of 64 slots: 1 KB of the table
  auto bucket = [&](size_t i) {
    return ((mix64((uint64_t{merges[i].first} << 32) | merges[i].second) & (cap - 1)) >> shift);
  };
  std::vector<uint32_t> start(((cap - 1) >> shift) + 2, 0), order(n);  // [b + 1]: how many in bucket b
  for (size_t i = 0; i < n; ++i) ++start[bucket(i) + 1];
  for (size_t k = 1; k < start.size(); ++k) start[k] += start[k - 1];
  for (size_t i = 0; i < n; ++i) order[start[bucket(i)]++] = static_cast<uint32_t>(i);
  for (uint32_t i : order) bpe->pairs_.insert(merges[i].first, merges[i].second, PairMap::Merge{i, made[i]});
  bpe->init_merges(std::move(merges), ignore_merges);
  return bpe;
}

}  // namespace fastllm
