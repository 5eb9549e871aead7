// Reading vocabulary files: tiktoken rank files, GPT-2 encoder.json + vocab.bpe, and the byte-level
// alphabet they are written in (tokenizer.json: tokenizer_json.cpp). Every error names the file, the line
// and the problem.
#include "vocab_io.h"

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

#include "bpe.h"

namespace fastllm {

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

namespace {

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

}  // namespace fastllm
