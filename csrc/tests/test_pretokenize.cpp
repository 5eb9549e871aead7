// Unit tests for csrc/pretokenize.cpp (the built-in scanners) and csrc/unicode_tables.h. Plain main();
// run by ctest, also under ASan+UBSan. The differential tests against tiktoken live in
// tests/test_pretokenize.py; the expected splits here were checked against tiktoken's regexes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "pretokenize.h"
#include "unicode_tables.h"

namespace {

using Pieces = std::vector<std::string>;

// Pieces of `text`. The text is copied into a buffer of exactly its size, so ASan flags any read past
// the end (a std::string would hide it behind its terminating NUL). Also checks that the pieces are
// non-empty, contiguous and cover the text.
Pieces split(const std::string& pattern, const std::string& text) {
  std::unique_ptr<char[]> buffer(new char[text.size() + 1]);
  std::memcpy(buffer.get(), text.data(), text.size());
  const std::string_view view(buffer.get(), text.size());
  std::vector<fastllm::Span> spans = {{7, 7}};  // split() appends: this one must survive
  fastllm::make_pretokenizer(pattern)->split(view, spans);
  CHECK(spans.front() == fastllm::Span(7, 7));
  Pieces pieces;
  size_t next = 0;
  for (size_t k = 1; k < spans.size(); ++k) {
    CHECK(spans[k].first == next && spans[k].second > spans[k].first);
    pieces.emplace_back(text.substr(spans[k].first, spans[k].second - spans[k].first));
    next = spans[k].second;
  }
  CHECK(next == text.size());
  return pieces;
}

std::string show(const Pieces& pieces) {
  std::string out;
  for (const auto& p : pieces) {
    out += '[';
    for (char ch : p) {
      const auto c = static_cast<unsigned char>(ch);
      if (c >= 0x20 && c < 0x7F) {
        out += static_cast<char>(c);
      } else {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02X", c);
        out += hex;
      }
    }
    out += ']';
  }
  return out;
}

void expect(const std::string& pattern, const std::string& text, const Pieces& want, int line) {
  const Pieces got = split(pattern, text);
  if (got != want) {
    std::fprintf(stderr, "%s:%d: %s split %s, want %s\n", __FILE__, line, pattern.c_str(), show(got).c_str(),
                 show(want).c_str());
    ++g_failures;
  }
}
#define EXPECT_SPLIT(pattern, text, ...) expect(pattern, text, Pieces __VA_ARGS__, __LINE__)

// UTF-8 spellings of the non-ASCII characters used below.
const std::string kLongS = "\xC5\xBF";      // U+017F LATIN SMALL LETTER LONG S, folds to s
const std::string kKelvin = "\xE2\x84\xAA";  // U+212A KELVIN SIGN, folds to k
const std::string kNbsp = "\xC2\xA0";        // U+00A0, White_Space
const std::string kNel = "\xC2\x85";         // U+0085, White_Space
const std::string kIdeoSpace = "\xE3\x80\x80";  // U+3000, White_Space
const std::string kAcute = "\xCC\x81";       // U+0301 COMBINING ACUTE ACCENT (Mn)
const std::string kModH = "\xCA\xB0";        // U+02B0 MODIFIER LETTER SMALL H (Lm)
const std::string kZhong = "\xE4\xB8\xAD";   // U+4E2D (Lo)
const std::string kWen = "\xE6\x96\x87";     // U+6587 (Lo)
const std::string kEacute = "\xC3\xA9";      // U+00E9 (Ll)
const std::string kArabic3 = "\xD9\xA3";     // U+0663 ARABIC-INDIC DIGIT THREE (Nd)
const std::string kGrin = "\xF0\x9F\x98\x80";   // U+1F600 (So)
const std::string kZwj = "\xE2\x80\x8D";     // U+200D ZERO WIDTH JOINER (Cf)

// ==== Unicode tables ====

void test_tables() {
  using namespace fastllm::unicode;
  CHECK(std::string(kUnicodeVersion) == "16.0.0");
  CHECK(flags_of('A') == kLu && flags_of('z') == kLl && flags_of('7') == kNumber);
  CHECK(flags_of(0x01C5) == kLt && flags_of(0x02B0) == kLm && flags_of(0x3042) == kLo);
  CHECK(flags_of(0x0301) == kMark && flags_of(0x0903) == kMark && flags_of(0x20DD) == kMark);  // Mn, Mc, Me
  CHECK(flags_of(0x0663) == kNumber && flags_of(0x2160) == kNumber && flags_of(0x00BD) == kNumber);  // Nd Nl No
  // White_Space is Rust's \s: \t..\r, space, NEL, NBSP, U+1680, U+2000..U+200A, U+2028/9, U+202F, U+205F,
  // U+3000. Not U+001C..U+001F (Python's str.isspace() says yes), nor U+180E or U+200B.
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u,
                      0x2029u, 0x202Fu, 0x205Fu, 0x3000u})
    CHECK(flags_of(cp) == kSpace);
  for (uint32_t cp : {0x1Cu, 0x1Du, 0x1Eu, 0x1Fu, 0x180Eu, 0x200Bu, 0xFEFFu}) CHECK(flags_of(cp) == 0);
  // Unicode 16.0 exactly: U+1C89 and U+A7CB are new capitals in 16.0; U+0295 is Ll until 17.0 makes it Lo;
  // U+0C5C and U+16EA0 are assigned only in 17.0.
  CHECK(flags_of(0x1C89) == kLu && flags_of(0xA7CB) == kLu && flags_of(0x0295) == kLl);
  CHECK(flags_of(0x0C5C) == 0 && flags_of(0x16EA0) == 0);
  CHECK(flags_of(0xE000) == 0 && flags_of(0x10FFFF) == 0 && flags_of(0x110000) == 0 && flags_of(0xFFFFFFFF) == 0);
  for (uint32_t b = 0; b < 128; ++b) CHECK(kAsciiFlags[b] == flags_of(b));
  CHECK(fold_to_ascii_letter('S') == 's' && fold_to_ascii_letter('s') == 's' && fold_to_ascii_letter(0x017F) == 's');
  CHECK(fold_to_ascii_letter(0x212A) == 'k' && fold_to_ascii_letter('@') == 0 && fold_to_ascii_letter('[') == 0);
  CHECK(fold_to_ascii_letter(0x0131) == 0 && fold_to_ascii_letter(0x00DF) == 0);  // dotless i, sharp s
}

// ==== gpt2 ====

void test_gpt2() {
  EXPECT_SPLIT("gpt2", "Hello world", {"Hello", " world"});
  EXPECT_SPLIT("gpt2", "I'm it's we'll you've they're he'd don't",
               {"I", "'m", " it", "'s", " we", "'ll", " you", "'ve", " they", "'re", " he", "'d", " don", "'t"});
  EXPECT_SPLIT("gpt2", "IT'S 'LL '" + kLongS, {"IT", "'", "S", " '", "LL", " '", kLongS});  // case-sensitive
  EXPECT_SPLIT("gpt2", "'x ''s", {"'", "x", " ''", "s"});
  EXPECT_SPLIT("gpt2", "a\t\x0b\x0c b", {"a", "\t\x0b\x0c", " b"});
  EXPECT_SPLIT("gpt2", "a  b", {"a", " ", " b"});
  EXPECT_SPLIT("gpt2", "a\tb", {"a", "\t", "b"});
  EXPECT_SPLIT("gpt2", "a\n\n b", {"a", "\n\n", " b"});
  EXPECT_SPLIT("gpt2", "a\r\nb", {"a", "\r", "\n", "b"});
  EXPECT_SPLIT("gpt2", "a \r\n", {"a", " \r\n"});
  EXPECT_SPLIT("gpt2", "end  ", {"end", "  "});
  EXPECT_SPLIT("gpt2", "x1234567 89", {"x", "1234567", " 89"});
  EXPECT_SPLIT("gpt2", "a, b!!c", {"a", ",", " b", "!!", "c"});
  EXPECT_SPLIT("gpt2", "\x1c\x1d x", {"\x1c\x1d", " x"});  // U+001C..U+001F are not \s
  EXPECT_SPLIT("gpt2", "a" + kNbsp + "b", {"a", kNbsp, "b"});
  EXPECT_SPLIT("gpt2", "a" + kIdeoSpace + kIdeoSpace + " b", {"a", kIdeoSpace + kIdeoSpace, " b"});
  EXPECT_SPLIT("gpt2", "e" + kAcute + " caf" + kEacute, {"e", kAcute, " caf" + kEacute});  // marks are not \p{L}
  EXPECT_SPLIT("gpt2", kZhong + kWen + " " + kArabic3 + "4", {kZhong + kWen, " " + kArabic3 + "4"});
  EXPECT_SPLIT("gpt2", "hi " + kGrin + kZwj + kGrin, {"hi", " " + kGrin + kZwj + kGrin});
  for (const char* alias : {"r50k", "p50k"}) EXPECT_SPLIT(alias, "it's  ok", {"it", "'s", " ", " ok"});
}

// ==== cl100k ====

void test_cl100k() {
  EXPECT_SPLIT("cl100k", "Hello world", {"Hello", " world"});
  EXPECT_SPLIT("cl100k", "IT'S I'M WE'LL 'Ve 'rE", {"IT", "'S", " I", "'M", " WE", "'LL", " '", "Ve", " '", "rE"});
  EXPECT_SPLIT("cl100k", "x'" + kLongS + " '" + kKelvin, {"x", "'" + kLongS, " '", kKelvin});
  EXPECT_SPLIT("cl100k", "'hello", {"'hello"});
  EXPECT_SPLIT("cl100k", "1234567", {"123", "456", "7"});
  EXPECT_SPLIT("cl100k", "a 12 " + kArabic3 + "1234", {"a", " ", "12", " ", kArabic3 + "12", "34"});
  EXPECT_SPLIT("cl100k", "a\t\x0b\x0c b", {"a", "\t\x0b\x0c", " b"});
  EXPECT_SPLIT("cl100k", "\tword \tword", {"\tword", " ", "\tword"});
  EXPECT_SPLIT("cl100k", "\rword\nword", {"\r", "word", "\n", "word"});
  EXPECT_SPLIT("cl100k", "\x1cword", {"\x1cword"});
  EXPECT_SPLIT("cl100k", "a \n\n b", {"a", " \n\n", " b"});
  EXPECT_SPLIT("cl100k", "a\r\n\r\nb", {"a", "\r\n\r\n", "b"});
  EXPECT_SPLIT("cl100k", "a \n \t x", {"a", " \n", " \t", " x"});
  EXPECT_SPLIT("cl100k", "a \n  ", {"a", " \n  "});  // \s++$ comes before \s*[\r\n]
  EXPECT_SPLIT("cl100k", "end  ", {"end", "  "});
  EXPECT_SPLIT("cl100k", "x!!\n\ny", {"x", "!!\n\n", "y"});
  EXPECT_SPLIT("cl100k", "x !?\r\n", {"x", " !?\r\n"});
  EXPECT_SPLIT("cl100k", "a" + kNel + kNel + "b", {"a", kNel, kNel + "b"});
  EXPECT_SPLIT("cl100k", "caf" + kEacute + kAcute + "s", {"caf" + kEacute, kAcute + "s"});
  EXPECT_SPLIT("cl100k", kZhong + kWen + "," + kZhong, {kZhong + kWen, "," + kZhong});
  EXPECT_SPLIT("cl100k", kGrin + kGrin + " ok", {kGrin + kGrin, " ok"});
}

// ==== o200k ====

void test_o200k() {
  EXPECT_SPLIT("o200k", "Hello world", {"Hello", " world"});
  EXPECT_SPLIT("o200k", "don't DON'T Don'T we'LL", {"don't", " DON'T", " Don'T", " we'LL"});
  EXPECT_SPLIT("o200k", "it'" + kLongS + " 's", {"it'" + kLongS, " '", "s"});
  EXPECT_SPLIT("o200k", "'s", {"'s"});
  EXPECT_SPLIT("o200k", "HTTPServer iPhone", {"HTTPServer", " i", "Phone"});
  EXPECT_SPLIT("o200k", "ABC1", {"ABC", "1"});
  EXPECT_SPLIT("o200k", "1234567", {"123", "456", "7"});
  EXPECT_SPLIT("o200k", "a\t\x0b\x0c b", {"a", "\t\x0b\x0c", " b"});
  EXPECT_SPLIT("o200k", "\rword\nWORD", {"\r", "word", "\n", "WORD"});
  EXPECT_SPLIT("o200k", "a \n  ", {"a", " \n", "  "});  // \s*[\r\n]+ comes first, and there is no \s++$
  EXPECT_SPLIT("o200k", "a \r\n\r\n  b", {"a", " \r\n\r\n", " ", " b"});
  EXPECT_SPLIT("o200k", "end  ", {"end", "  "});
  EXPECT_SPLIT("o200k", "x//\n/y", {"x", "//\n/", "y"});
  EXPECT_SPLIT("o200k", "x //", {"x", " //"});
  // Marks are "upper" and "lower" but not \p{L}, so they may be the prefix, and the regex backtracks.
  EXPECT_SPLIT("o200k", kAcute + "AB", {kAcute, "AB"});
  EXPECT_SPLIT("o200k", "!" + kAcute, {"!" + kAcute});
  EXPECT_SPLIT("o200k", "!!" + kAcute, {"!!" + kAcute});
  EXPECT_SPLIT("o200k", "e" + kAcute + "A", {"e" + kAcute, "A"});
  // Lm/Lo are in both letter classes: upper* backtracks to give the last one to lower+.
  EXPECT_SPLIT("o200k", "A" + kModH + "A1", {"A" + kModH, "A", "1"});
  EXPECT_SPLIT("o200k", "A" + kModH + "Aa", {"A" + kModH + "Aa"});
  EXPECT_SPLIT("o200k", "A" + kEacute + "Aa", {"A" + kEacute, "Aa"});
  EXPECT_SPLIT("o200k", " " + kZhong + kWen + "." + kZhong, {" " + kZhong + kWen, "." + kZhong});
  EXPECT_SPLIT("o200k", "hi " + kGrin + kZwj + kGrin + "!", {"hi", " " + kGrin + kZwj + kGrin + "!"});
}

// ==== Invalid UTF-8, empty input, long input ====

void test_invalid_utf8() {
  // Each invalid byte is one code point of no category ([^\s\p{L}\p{N}], and a possible word prefix).
  EXPECT_SPLIT("gpt2", "a\xFF" "b", {"a", "\xFF", "b"});
  EXPECT_SPLIT("cl100k", "a\xFF" "b", {"a", "\xFF" "b"});
  EXPECT_SPLIT("o200k", "a\xFF" "b", {"a", "\xFF" "b"});
  EXPECT_SPLIT("gpt2", "a\x80" "b", {"a", "\x80", "b"});         // lone continuation byte
  EXPECT_SPLIT("gpt2", "a\xC3" "b", {"a", "\xC3", "b"});         // lead byte without its continuation
  EXPECT_SPLIT("gpt2", "a\xC1\x81", {"a", "\xC1\x81"});          // overlong 'A' is not a letter
  EXPECT_SPLIT("gpt2", "1\xC0\xB1", {"1", "\xC0\xB1"});          // overlong '1' is not a number
  EXPECT_SPLIT("gpt2", "a\xE0\x81\x81", {"a", "\xE0\x81\x81"});  // 3-byte overlong
  EXPECT_SPLIT("gpt2", "a\xF0\x80\x81\x81", {"a", "\xF0\x80\x81\x81"});  // 4-byte overlong
  EXPECT_SPLIT("gpt2", "a\xED\xA0\x80", {"a", "\xED\xA0\x80"});  // surrogate
  EXPECT_SPLIT("gpt2", "a\xF4\x90\x80\x80", {"a", "\xF4\x90\x80\x80"});  // past U+10FFFF
  EXPECT_SPLIT("gpt2", "a\xE4\xB8", {"a", "\xE4\xB8"});          // truncated at the end of the text
  EXPECT_SPLIT("gpt2", "a\xF0\x9F\x98", {"a", "\xF0\x9F\x98"});
  EXPECT_SPLIT("o200k", "\xE4\xB8" "a", {"\xE4\xB8", "a"});
  // Random bytes, biased towards UTF-8 lead and continuation bytes and the ASCII the scanners test.
  std::mt19937 rng(12345);
  const std::string interesting = "\t\n\x0b\x0c\r '/sStTlLdDmMvVrReE19aZ!\xC2\xA0\x80\xBF\xC3\xC5\xCC\xE0\xE2\xE4\xED"
                                  "\xF0\xF4\xF5\xFF";
  for (int round = 0; round < 2000; ++round) {
    std::string text(rng() % 40, '\0');
    for (char& c : text) {
      c = rng() % 2 ? interesting[rng() % interesting.size()] : static_cast<char>(rng() % 256);
    }
    for (const char* pattern : {"gpt2", "cl100k", "o200k"}) split(pattern, text);  // coverage checked inside
  }
}

void test_empty_and_long() {
  for (const char* pattern : {"gpt2", "r50k", "p50k", "cl100k", "o200k"}) {
    CHECK(split(pattern, "").empty());
    CHECK(fastllm::make_pretokenizer(pattern)->pattern() == pattern);
  }
  // Long runs that a backtracking regex handles in quadratic time take one pass here.
  const size_t n = 1 << 20;
  CHECK(split("gpt2", std::string(n, ' ')).size() == 1);
  CHECK(split("cl100k", std::string(n, ' ') + "x").size() == 2);
  CHECK(split("o200k", std::string(n, ' ') + "x").size() == 2);
  CHECK(split("o200k", std::string(n, 'A') + "1").size() == 2);
  std::string marks;
  for (size_t k = 0; k < n / 2; ++k) marks += kAcute;
  CHECK(split("o200k", marks + "A1").size() == 3);
  CHECK(split("cl100k", std::string(n, '7')).size() == (n + 2) / 3);
  CHECK(split("o200k", std::string(n, '\n')).size() == 1);
}

void test_other_patterns_go_to_the_regex_engine() {
  bool threw = false;
  try {
    fastllm::make_pretokenizer("(unclosed");
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  EXPECT_SPLIT("[a-z]+|[^a-z]+", "ab12cd", {"ab", "12", "cd"});
}

// The same tiktoken pattern strings through the regex engine (make_pretokenizer sends them there) must give
// the same spans, also on invalid UTF-8, which tiktoken never sees.
void test_agrees_with_regex_engine() {
  const char* patterns[][2] = {
      {"gpt2", R"('(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s)"},
      {"cl100k", R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$)"
                 R"(|\s*[\r\n]|\s+(?!\S)|\s)"},
      {"o200k", R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
                R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
                R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
                R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
                R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
  };
  const std::string hot = "\t\n\x0b\x0c\r '/sStTlLdDvVeE1aA!\x1c\x80\x81\x85\x98\x9F\xA0\xAD\xB8\xBF\xC2\xC5\xCA\xCC"
                          "\xE0\xE2\xE3\xE4\xED\xF0\xF4\xF5\xFF";
  std::mt19937 rng(2024);
  for (const auto& [name, regex] : patterns) {
    const auto scanner = fastllm::make_pretokenizer(name);
    const auto engine = fastllm::make_pretokenizer(regex);
    int mismatches = 0;
    for (int round = 0; round < 20000; ++round) {
      std::string text(rng() % 40, '\0');
      for (char& c : text) c = rng() % 4 ? hot[rng() % hot.size()] : static_cast<char>(rng() % 256);
      std::vector<fastllm::Span> a, b;
      scanner->split(text, a);
      engine->split(text, b);
      if (a != b && ++mismatches <= 3) {
        std::fprintf(stderr, "%s and its regex split differently: %s vs %s\n", name, show(split(name, text)).c_str(),
                     show(split(regex, text)).c_str());
      }
    }
    CHECK(mismatches == 0);
  }
}

}  // namespace

int main() {
  test_tables();
  test_gpt2();
  test_cl100k();
  test_o200k();
  test_invalid_utf8();
  test_empty_and_long();
  test_other_patterns_go_to_the_regex_engine();
  test_agrees_with_regex_engine();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_pretokenize: all checks passed\n");
  return 0;
}
