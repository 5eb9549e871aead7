// Reading vocabulary files: tiktoken rank files, GPT-2 encoder.json + vocab.bpe, and the byte-level
// alphabet they are written in. Every error names the file, the line and the problem.
#include <array>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "bpe.h"

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
  std::ifstream f(path, std::ios::binary);
  if (!f) throw BpeError(path + ": cannot open the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
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

bool base64_decode(std::string_view in, std::string& out) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(a[i])] = static_cast<int8_t>(i);
    return t;
  }();
  out.clear();
  if (in.size() % 4 != 0 || in.empty()) return false;
  size_t pad = in.back() == '=' ? (in[in.size() - 2] == '=' ? 2 : 1) : 0;
  for (size_t i = 0; i < in.size(); i += 4) {
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      char c = in[i + k];
      int8_t d = table[static_cast<unsigned char>(c)];
      bool is_pad = c == '=' && i + 4 == in.size() && k >= 4 - pad;
      if (d < 0 && !is_pad) return false;
      v = (v << 6) | static_cast<uint32_t>(d < 0 ? 0 : d);
    }
    out += static_cast<char>(v >> 16);
    if (!(i + 4 == in.size() && pad == 2)) out += static_cast<char>((v >> 8) & 0xFF);
    if (!(i + 4 == in.size() && pad >= 1)) out += static_cast<char>(v & 0xFF);
  }
  return true;
}

// A JSON reader for exactly one shape: an object whose values are non-negative integers.
class FlatJson {
 public:
  FlatJson(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  CoreBPE::Vocab parse_string_to_uint() {
    CoreBPE::Vocab out;
    skip_ws();
    expect('{');
    skip_ws();
    if (peek() == '}') return out;
    std::string key, bytes;
    while (true) {
      skip_ws();
      string(key);
      skip_ws();
      expect(':');
      skip_ws();
      size_t start = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      uint32_t id;
      if (!parse_uint32(std::string_view(s_).substr(start, i_ - start), id))
        error("the value of \"" + key + "\" is not a non-negative integer id");
      if (!unicode_to_bytes(key, bytes)) error("\"" + key + "\" has a character outside GPT-2's byte-level alphabet");
      out.emplace_back(bytes, id);
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      expect('}');
      break;
    }
    skip_ws();
    if (i_ != s_.size()) error("unexpected text after the object");
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
  void string(std::string& out) {
    out.clear();
    expect('"');
    while (true) {
      if (i_ >= s_.size()) error("unterminated string");
      char c = s_[i_++];
      if (c == '"') return;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) error("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (i_ + 2 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') error("lone surrogate in \\u escape");
            i_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) error("bad surrogate pair in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            error("lone surrogate in \\u escape");
          }
          append_utf8(cp, out);
          break;
        }
        default: error(std::string("bad escape '\\") + e + "'");
      }
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
    auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c, i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu), i += 2;
    } else {
      return false;  // every character of the alphabet is below U+0800
    }
    if (cp >= 512 || kAlphabet.from_cp[cp] < 0) return false;
    out += static_cast<char>(kAlphabet.from_cp[cp]);
  }
  return true;
}

CoreBPE::Vocab load_tiktoken_ranks(const std::string& path) {
  std::string text = read_file(path);
  CoreBPE::Vocab ranks;
  ranks.reserve(text.size() / 12);
  std::string bytes;
  size_t line = 0;
  for (size_t i = 0; i < text.size();) {
    size_t eol = text.find('\n', i);
    if (eol == std::string::npos) eol = text.size();
    std::string_view l(text.data() + i, eol - i);
    ++line;
    i = eol + 1;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty()) continue;
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos || l.find(' ', sp + 1) != std::string_view::npos)
      fail(path, line, "expected '<base64 token> <rank>'");
    uint32_t rank;
    if (!base64_decode(l.substr(0, sp), bytes)) fail(path, line, "the token is not valid base64");
    if (!parse_uint32(l.substr(sp + 1), rank)) fail(path, line, "the rank is not a non-negative integer");
    ranks.emplace_back(bytes, rank);
  }
  if (ranks.empty()) throw BpeError(path + ": no tokens in the file");
  return ranks;
}

std::pair<CoreBPE::Vocab, CoreBPE::Merges> load_gpt2_files(const std::string& encoder_json,
                                                           const std::string& vocab_bpe) {
  CoreBPE::Vocab vocab = FlatJson(encoder_json, read_file(encoder_json)).parse_string_to_uint();
  if (vocab.empty()) throw BpeError(encoder_json + ": the vocabulary is empty");
  std::string arena;  // the tokens back to back, indexed by `ids` to resolve the merges
  for (auto& [tok, id] : vocab) {
    if (tok.empty() || tok.size() > BytesMap::kMaxLen)
      throw BpeError(encoder_json + ": token id " + std::to_string(id) + " has " + std::to_string(tok.size()) +
                     " bytes (expected 1 to " + std::to_string(BytesMap::kMaxLen) + ")");
    arena += tok;
  }
  BytesMap ids;
  ids.reset(&arena, vocab.size());
  uint32_t off = 0;
  for (auto& [tok, id] : vocab) {
    ids.insert(off, static_cast<uint32_t>(tok.size()), id);
    off += static_cast<uint32_t>(tok.size());
  }

  std::string text = read_file(vocab_bpe);
  CoreBPE::Merges merges;
  std::string left, right;
  size_t line = 0;
  for (size_t i = 0; i < text.size();) {
    size_t eol = text.find('\n', i);
    if (eol == std::string::npos) eol = text.size();
    std::string_view l(text.data() + i, eol - i);
    ++line;
    i = eol + 1;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty() || (line == 1 && l.substr(0, 8) == "#version")) continue;
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 >= l.size() || l.find(' ', sp + 1) != std::string_view::npos)
      fail(vocab_bpe, line, "expected '<left> <right>'");
    if (!unicode_to_bytes(l.substr(0, sp), left) || !unicode_to_bytes(l.substr(sp + 1), right))
      fail(vocab_bpe, line, "a symbol has a character outside GPT-2's byte-level alphabet");
    uint32_t a = ids.find(left.data(), left.size()), b = ids.find(right.data(), right.size());
    if (a == BytesMap::kMissing || b == BytesMap::kMissing)
      fail(vocab_bpe, line, "'" + std::string(a == BytesMap::kMissing ? l.substr(0, sp) : l.substr(sp + 1)) +
                                "' is not in " + encoder_json);
    merges.emplace_back(a, b);  // CoreBPE::from_merges checks that the merged token exists
  }
  return {std::move(vocab), std::move(merges)};
}

}  // namespace fastllm
