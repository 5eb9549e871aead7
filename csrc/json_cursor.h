// A strict-JSON cursor over a document in memory: position and error messages (file, line, column), whitespace,
// strings (UTF-8 validated, escapes and surrogate pairs decoded as Python's json does), numbers, literals, and
// any value validated and skipped. tokenizer_json.cpp reads a tokenizer.json with it, decoding the parts it needs
// and skipping the rest; the hot loops take the position into locals (at(), seek()) rather than storing through
// members.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "bpe.h"  // BpeError
#include "vocab_io.h"  // append_utf8

namespace fastllm {

// The length of the valid UTF-8 sequence at p (lead byte >= 0x80, `avail` bytes readable), or 0: no
// overlong forms, surrogates or code points past U+10FFFF, as Python's decoder.
inline size_t utf8_len(const char* p, size_t avail) {
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

inline uint32_t utf8_decode(const char* p, size_t len) {
  auto b = [p](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(p[k])); };
  if (len == 2) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (len == 3) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

class JsonCursor {
 protected:
  JsonCursor(const std::string& path, std::string_view text) : path_(path), s_(text), end_(text.data() + text.size()) {}

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

  const std::string& path_;
  std::string_view s_;
  const char* end_;
  size_t i_ = 0;
};

}  // namespace fastllm
