// Reading vocabulary files: tiktoken rank files, GPT-2 encoder.json + vocab.bpe, and the byte-level
// alphabet they are written in. Every error names the file, the line and the problem.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bpe.h"
#include "bpe_backtrack.h"  // complete types for CoreBPE's members (from_tokenizer_json builds one)
#include "hash.h"

namespace fastllm {

namespace {

// GPT-2's printable stand-ins: bytes that are printable Latin-1 map to themselves, the other 68
// (controls, space, DEL, NBSP, soft hyphen) to U+0100.. in byte order.
struct ByteAlphabet {
  uint32_t to_cp[256];
  int16_t from_cp[512];
  ByteAlphabet() {
    for (auto& b : from_cp) b = -1;
    uint32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : extra++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet kAlphabet;

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string read_file(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw BpeError(path + ": cannot open the file");
  std::string out;
  // One read of the known size (no stream buffers copying the text twice); then whatever is left.
  if (std::fseek(f.get(), 0, SEEK_END) == 0) {
    long size = std::ftell(f.get());
    if (size > 0) out.resize(static_cast<size_t>(size));
    std::rewind(f.get());
  }
  size_t got = std::fread(&out[0], 1, out.size(), f.get());
  out.resize(got);
  char buf[1 << 16];
  while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) out.append(buf, got);
  if (std::ferror(f.get())) throw BpeError(path + ": cannot read the file");
  return out;
}

[[noreturn]] void fail(const std::string& path, size_t line, const std::string& what) {
  throw BpeError(path + ": line " + std::to_string(line) + ": " + what);
}

bool parse_uint32(std::string_view s, uint32_t& out) {
  if (s.empty() || s.size() > 10) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v >= UINT32_MAX) return false;
  out = static_cast<uint32_t>(v);
  return true;
}

// Appends the bytes of `in` to out; false (out unspecified) if `in` is not base64.
bool base64_decode(std::string_view in, std::string& out) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(a[i])] = static_cast<int8_t>(i);
    return t;
  }();
  if (in.size() % 4 != 0 || in.empty()) return false;
  size_t pad = in.back() == '=' ? (in[in.size() - 2] == '=' ? 2 : 1) : 0;
  size_t at = out.size();
  out.resize(at + in.size() / 4 * 3);
  char* dst = &out[at];
  for (size_t i = 0; i < in.size(); i += 4) {
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      char c = in[i + k];
      int8_t d = table[static_cast<unsigned char>(c)];
      if (d < 0 && !(c == '=' && i + 4 == in.size() && k >= 4 - pad)) return false;
      v = (v << 6) | static_cast<uint32_t>(d < 0 ? 0 : d);
    }
    *dst++ = static_cast<char>(v >> 16);
    *dst++ = static_cast<char>((v >> 8) & 0xFF);
    *dst++ = static_cast<char>(v & 0xFF);
  }
  out.resize(out.size() - pad);
  return true;
}

// The byte of GPT-2's alphabet at s[i] (one character, 1 or 2 bytes of UTF-8: the alphabet lies below
// U+0200); advances i. -1 if the character is not in the alphabet.
int bytelevel_char(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  uint32_t cp;
  if (c < 0x80) {
    cp = c, i += 1;
  } else if (c >= 0xC2 && c <= 0xDF && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xC0) == 0x80) {
    cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu), i += 2;
  } else {
    return -1;
  }
  return cp < 512 ? kAlphabet.from_cp[cp] : -1;
}

// A JSON reader for exactly one shape, encoder.json: an object of GPT-2 byte-level strings to
// non-negative integer ids. The keys are decoded to token bytes straight into a Vocab.
class EncoderJson {
 public:
  EncoderJson(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  Vocab parse() {
    Vocab out;
    out.bytes.resize(s_.size());  // a token's bytes are never more than its JSON text; trimmed at the end
    char* dst = &out.bytes[0];
    out.tokens.reserve(s_.size() / 16);
    skip_ws();
    expect('{');
    skip_ws();
    if (peek() == '}') {
      ++i_;
    } else {
      while (true) {
        skip_ws();
        size_t key_start = i_ + 1, off = static_cast<size_t>(dst - out.bytes.data());
        dst = token(dst);
        std::string_view key(s_.data() + key_start, i_ - 1 - key_start);  // as written, for messages
        skip_ws();
        expect(':');
        skip_ws();
        size_t start = i_;
        while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
        uint32_t id;
        if (!parse_uint32(std::string_view(s_).substr(start, i_ - start), id))
          error("the value of \"" + std::string(key) + "\" is not a non-negative integer id");
        size_t len = static_cast<size_t>(dst - out.bytes.data()) - off;
        out.tokens.push_back(Vocab::Token{static_cast<uint32_t>(off), static_cast<uint32_t>(len), id});
        skip_ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        break;
      }
    }
    skip_ws();
    if (i_ != s_.size()) error("unexpected text after the object");
    out.bytes.resize(static_cast<size_t>(dst - out.bytes.data()));
    out.bytes.shrink_to_fit();  // the tokenizer keeps it as its arena
    return out;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    size_t line = 1;
    for (size_t k = 0; k < i_ && k < s_.size(); ++k) line += s_[k] == '\n';
    fail(path_, line, what + " (byte offset " + std::to_string(i_) + ")");
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++i_;
  }
  uint32_t hex4() {
    if (i_ + 4 > s_.size()) error("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_++];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) error("bad \\u escape");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  }
  // A JSON string of byte-level characters: writes the bytes they stand for at dst; returns the end.
  char* token(char* dst) {
    size_t start = i_ + 1;
    expect('"');
    while (true) {
      if (i_ >= s_.size()) error("unterminated string");
      auto c = static_cast<unsigned char>(s_[i_]);
      if (c >= '!' && c <= '~' && c != '"' && c != '\\') {  // printable ASCII stands for itself
        *dst++ = static_cast<char>(c);
        ++i_;
        continue;
      }
      if (c == '"') {
        ++i_;
        return dst;
      }
      int byte;
      if (c != '\\') {
        byte = bytelevel_char(s_, i_);
      } else {
        if (++i_ >= s_.size()) error("unterminated escape");
        char e = s_[i_++];
        uint32_t cp = e == '"' ? '"' : e == '\\' ? '\\' : e == '/' ? '/' : e == 'u' ? hex4() : 0;
        if (cp == 0 && e != 'u') {
          if (std::string_view("bfnrt").find(e) == std::string_view::npos) error(std::string("bad escape '\\") + e + "'");
          cp = 1;  // a control character: not in the alphabet
        }
        byte = cp < 512 ? kAlphabet.from_cp[cp] : -1;
      }
      if (byte < 0) {
        size_t end = s_.find('"', i_);
        error("\"" + s_.substr(start, end == std::string::npos ? 40 : end - start) +
              "\" has a character outside GPT-2's byte-level alphabet");
      }
      *dst++ = static_cast<char>(byte);
    }
  }

  const std::string& path_;
  const std::string& s_;
  size_t i_ = 0;
};

}  // namespace

std::string byte_to_unicode(uint8_t b) {
  std::string s;
  append_utf8(kAlphabet.to_cp[b], s);
  return s;
}

bool unicode_to_bytes(std::string_view s, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    int byte = bytelevel_char(s, i);
    if (byte < 0) return false;
    out += static_cast<char>(byte);
  }
  return true;
}

// Calls fn(line number, line) for each line of `text` that is not empty (a final '\r' removed).
template <typename Fn>
static void for_each_line(const std::string& text, Fn fn) {
  size_t line = 0;
  for (size_t i = 0; i < text.size();) {
    const char* eol = static_cast<const char*>(std::memchr(text.data() + i, '\n', text.size() - i));
    size_t end = eol ? static_cast<size_t>(eol - text.data()) : text.size();
    std::string_view l(text.data() + i, end - i);
    ++line;
    i = end + 1;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (!l.empty()) fn(line, l);
  }
}

Vocab load_tiktoken_ranks(const std::string& path) {
  std::string text = read_file(path);
  Vocab ranks;
  ranks.bytes.reserve(text.size() / 2);
  ranks.tokens.reserve(text.size() / 12);
  for_each_line(text, [&](size_t line, std::string_view l) {
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos || l.find(' ', sp + 1) != std::string_view::npos)
      fail(path, line, "expected '<base64 token> <rank>'");
    uint32_t rank, off = static_cast<uint32_t>(ranks.bytes.size());
    if (!base64_decode(l.substr(0, sp), ranks.bytes)) fail(path, line, "the token is not valid base64");
    if (!parse_uint32(l.substr(sp + 1), rank)) fail(path, line, "the rank is not a non-negative integer");
    ranks.tokens.push_back(Vocab::Token{off, static_cast<uint32_t>(ranks.bytes.size() - off), rank});
  });
  if (ranks.tokens.empty()) throw BpeError(path + ": no tokens in the file");
  return ranks;
}

std::pair<Vocab, MergeText> load_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  Vocab vocab = EncoderJson(encoder_json, read_file(encoder_json)).parse();
  if (vocab.tokens.empty()) throw BpeError(encoder_json + ": the vocabulary is empty");
  for (const Vocab::Token& t : vocab.tokens)
    if (t.len == 0 || t.len > BytesMap::kMaxLen)
      throw BpeError(encoder_json + ": token id " + std::to_string(t.id) + " has " + std::to_string(t.len) +
                     " bytes (expected 1 to " + std::to_string(BytesMap::kMaxLen) + ")");

  std::string text = read_file(vocab_bpe);
  MergeText merges;
  merges.path = vocab_bpe;
  merges.bytes.reserve(text.size());
  merges.merges.reserve(text.size() / 8);
  for_each_line(text, [&](size_t line, std::string_view l) {
    if (line == 1 && l.substr(0, 8) == "#version") return;
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 >= l.size() || l.find(' ', sp + 1) != std::string_view::npos)
      fail(vocab_bpe, line, "expected '<left> <right>'");
    auto append = [&](std::string_view symbol) {  // its bytes; returns how many
      size_t before = merges.bytes.size();
      for (size_t i = 0; i < symbol.size();) {
        int byte = bytelevel_char(symbol, i);
        if (byte < 0) fail(vocab_bpe, line, "a symbol has a character outside GPT-2's byte-level alphabet");
        merges.bytes += static_cast<char>(byte);
      }
      return static_cast<uint32_t>(merges.bytes.size() - before);
    };
    uint32_t off = static_cast<uint32_t>(merges.bytes.size());
    uint32_t left = append(l.substr(0, sp));
    uint32_t right = append(l.substr(sp + 1));
    merges.merges.push_back(MergeText::Merge{off, left, right, static_cast<uint32_t>(line)});
  });
  return {std::move(vocab), std::move(merges)};
}

// ==== tokenizer.json ====

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
  void skip_ws() {
    const char* p = at();
    while (p < end_ && is_ws(*p)) ++p;
    seek(p);
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
    v.tokens.reserve(s_.size() / 64);
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    do {
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
    if (keep) out_.merges.reserve(s_.size() / 32);
    ++i_;
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return;
    }
    size_t n = 0;
    do {
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
  // Three lookups per merge (left, right, both) in a table larger than the caches: hash a block of
  // merges and prefetch their slots first, so that the misses overlap (as from_merge_text).
  constexpr size_t kBlock = 8;
  BytesKey keys[kBlock][3];
  for (size_t b = 0; b < n; b += kBlock) {
    size_t e = std::min(n, b + kBlock);
    for (size_t i = b; i < e; ++i) {
      const Merge& m = list[i];
      size_t avail = size - m.off;
      keys[i - b][0] = make_key(base + m.off, m.left_len, avail);
      keys[i - b][1] = make_key(base + m.off + m.left_len, right_len(m), avail - m.left_len);
      keys[i - b][2] = make_key(base + m.off, m.left_len + right_len(m), avail);
      for (const BytesKey& k : keys[i - b]) bpe->ordinary_.prefetch(k);
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
      uint32_t id = bpe->ordinary_.find(left.data(), left.size() + right.size(), keys[i - b][2]);
      if (id == BytesMap::kMissing) fail(i, " makes a token that is not in model.vocab");
      merges[i] = {a, c};
      made[i] = id;
    }
  }
  doc.merges = {};
  doc.merge_bytes.reset();
  // Insert the pairs in the order of their home slots in pairs_ (PairMap hashes with mix64 into a
  // table_capacity(n) table), so that the inserts sweep the table rather than miss the caches once
  // each (a third of the time of cl100k's 233k merges). Stable, so a repeated merge still meets its
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
