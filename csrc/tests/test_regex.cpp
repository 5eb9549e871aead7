// Unit tests for the regex engine (csrc/regex*.cpp). Plain main(); run by ctest, also under ASan+UBSan.
// The expected pieces come from Python's `regex` module (findall) with the same patterns, on text
// whose characters have the same Unicode 16 and 17 properties; tests/test_regex.py does the same
// differentially over random text, the corpora and random patterns.
#include <chrono>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "pretokenize.h"
#include "regex.h"

namespace {

using Pieces = std::vector<std::string>;

// Llama-3, Qwen2, GPT-2 as released, and tiktoken 0.14's cl100k_base / o200k_base pattern strings.
const char* const kLlama3 =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
const char* const kQwen2 =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
const char* const kGpt2Original = R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";
const char* const kR50k = R"re('(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s)re";
const char* const kCl100k =
    R"re('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)re";
const char* const kO200k =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)re"
    R"re(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)re"
    R"re(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

Pieces pieces(const fastllm::Regex& re, const std::string& text, bool keep_empty = false) {
  std::vector<fastllm::Span> spans;
  re.find_all(text, spans, keep_empty);
  Pieces out;
  for (auto [a, b] : spans) out.push_back(text.substr(a, b - a));
  return out;
}

Pieces pieces(const char* pattern, const std::string& text) { return pieces(fastllm::Regex(pattern), text); }

bool matches(const char* pattern, const std::string& text) { return pieces(pattern, text) == Pieces{text}; }

bool throws_invalid(const std::string& pattern) {
  try {
    fastllm::Regex re(pattern);
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find("invalid regex") != std::string::npos;
  }
  return false;
}

void test_tokenizer_patterns() {
  struct Case {
    const char* pattern;
    std::string text;
    Pieces expected;
  };
  const std::vector<Case> cases = {
      {kGpt2Original, "Hello world's 123   foo!!  \n bar",
       {"Hello", " world", "'s", " 123", "  ", " foo", "!!", "  \n", " bar"}},
      {kGpt2Original, "I'm DON'T she'LL we'Ve they'RE it'S",
       {"I", "'m", " DON", "'", "T", " she", "'", "LL", " we", "'", "Ve", " they", "'", "RE", " it", "'", "S"}},
      {kGpt2Original, "abc\u017f'\u017f 'K \u212a",
       {"abc\u017f", "'", "\u017f", " '", "K", " \u212a"}},
      {kGpt2Original, "12345 1234567\t\u0663\u0664\u0665\u0666 \u00b2\u00b3",
       {"12345", " 1234567", "\t", "\u0663\u0664\u0665\u0666", " \u00b2\u00b3"}},
      {kGpt2Original, "  leading and trailing  \n\n\n  x  ",
       {" ", " leading", " and", " trailing", "  \n\n\n ", " x", "  "}},
      {kGpt2Original, "line1\r\nline2\r\n\r\n  \r\n",
       {"line", "1", "\r", "\n", "line", "2", "\r\n\r\n  \r\n"}},
      {kGpt2Original, "\u4e2d\u6587\u5b57 \u65e5\u672c\u8a9e\u3002 \ud55c\uad6d\uc5b4",
       {"\u4e2d\u6587\u5b57", " \u65e5\u672c\u8a9e", "\u3002", " \ud55c\uad6d\uc5b4"}},
      {kGpt2Original, "e\u0301\u0301 cafe\u0301 \U0001f600\U0001f600 a\u00a0b\u2028c\u3000d",
       {"e", "\u0301\u0301", " cafe", "\u0301", " \U0001f600\U0001f600", " a", "\u00a0", "b", "\u2028", "c", "\u3000", "d"}},
      {kGpt2Original, "CamelCaseWord HTTPServer iPhone",
       {"CamelCaseWord", " HTTPServer", " iPhone"}},
      {kGpt2Original, "x = foo(bar)/2; // comment\n\treturn",
       {"x", " =", " foo", "(", "bar", ")/", "2", ";", " //", " comment", "\n", "\t", "return"}},
      {kCl100k, "Hello world's 123   foo!!  \n bar",
       {"Hello", " world", "'s", " ", "123", "  ", " foo", "!!", "  \n", " bar"}},
      {kCl100k, "I'm DON'T she'LL we'Ve they'RE it'S",
       {"I", "'m", " DON", "'T", " she", "'LL", " we", "'Ve", " they", "'RE", " it", "'S"}},
      {kCl100k, "abc\u017f'\u017f 'K \u212a",
       {"abc\u017f", "'\u017f", " '", "K", " \u212a"}},
      {kCl100k, "12345 1234567\t\u0663\u0664\u0665\u0666 \u00b2\u00b3",
       {"123", "45", " ", "123", "456", "7", "\t", "\u0663\u0664\u0665", "\u0666", " ", "\u00b2\u00b3"}},
      {kCl100k, "  leading and trailing  \n\n\n  x  ",
       {" ", " leading", " and", " trailing", "  \n\n\n", " ", " x", "  "}},
      {kCl100k, "line1\r\nline2\r\n\r\n  \r\n",
       {"line", "1", "\r\n", "line", "2", "\r\n\r\n  \r\n"}},
      {kCl100k, "\u4e2d\u6587\u5b57 \u65e5\u672c\u8a9e\u3002 \ud55c\uad6d\uc5b4",
       {"\u4e2d\u6587\u5b57", " \u65e5\u672c\u8a9e", "\u3002", " \ud55c\uad6d\uc5b4"}},
      {kCl100k, "e\u0301\u0301 cafe\u0301 \U0001f600\U0001f600 a\u00a0b\u2028c\u3000d",
       {"e", "\u0301\u0301", " cafe", "\u0301", " \U0001f600\U0001f600", " a", "\u00a0b", "\u2028c", "\u3000d"}},
      {kCl100k, "CamelCaseWord HTTPServer iPhone",
       {"CamelCaseWord", " HTTPServer", " iPhone"}},
      {kCl100k, "x = foo(bar)/2; // comment\n\treturn",
       {"x", " =", " foo", "(bar", ")/", "2", ";", " //", " comment", "\n", "\treturn"}},
      {kO200k, "Hello world's 123   foo!!  \n bar",
       {"Hello", " world's", " ", "123", "  ", " foo", "!!", "  \n", " bar"}},
      {kO200k, "I'm DON'T she'LL we'Ve they'RE it'S",
       {"I'm", " DON'T", " she'LL", " we'Ve", " they'RE", " it'S"}},
      {kO200k, "abc\u017f'\u017f 'K \u212a",
       {"abc\u017f'\u017f", " '", "K", " \u212a"}},
      {kO200k, "12345 1234567\t\u0663\u0664\u0665\u0666 \u00b2\u00b3",
       {"123", "45", " ", "123", "456", "7", "\t", "\u0663\u0664\u0665", "\u0666", " ", "\u00b2\u00b3"}},
      {kO200k, "  leading and trailing  \n\n\n  x  ",
       {" ", " leading", " and", " trailing", "  \n\n\n", " ", " x", "  "}},
      {kO200k, "line1\r\nline2\r\n\r\n  \r\n",
       {"line", "1", "\r\n", "line", "2", "\r\n\r\n  \r\n"}},
      {kO200k, "\u4e2d\u6587\u5b57 \u65e5\u672c\u8a9e\u3002 \ud55c\uad6d\uc5b4",
       {"\u4e2d\u6587\u5b57", " \u65e5\u672c\u8a9e", "\u3002", " \ud55c\uad6d\uc5b4"}},
      {kO200k, "e\u0301\u0301 cafe\u0301 \U0001f600\U0001f600 a\u00a0b\u2028c\u3000d",
       {"e\u0301\u0301", " cafe\u0301", " \U0001f600\U0001f600", " a", "\u00a0b", "\u2028c", "\u3000d"}},
      {kO200k, "CamelCaseWord HTTPServer iPhone",
       {"Camel", "Case", "Word", " HTTPServer", " i", "Phone"}},
      {kO200k, "x = foo(bar)/2; // comment\n\treturn",
       {"x", " =", " foo", "(bar", ")/", "2", ";", " //", " comment", "\n", "\treturn"}},
      {kLlama3, "Hello world's 123   foo!!  \n bar",
       {"Hello", " world", "'s", " ", "123", "  ", " foo", "!!", "  \n", " bar"}},
      {kLlama3, "I'm DON'T she'LL we'Ve they'RE it'S",
       {"I", "'m", " DON", "'T", " she", "'LL", " we", "'Ve", " they", "'RE", " it", "'S"}},
      {kLlama3, "abc\u017f'\u017f 'K \u212a",
       {"abc\u017f", "'\u017f", " '", "K", " \u212a"}},
      {kLlama3, "12345 1234567\t\u0663\u0664\u0665\u0666 \u00b2\u00b3",
       {"123", "45", " ", "123", "456", "7", "\t", "\u0663\u0664\u0665", "\u0666", " ", "\u00b2\u00b3"}},
      {kLlama3, "  leading and trailing  \n\n\n  x  ",
       {" ", " leading", " and", " trailing", "  \n\n\n", " ", " x", "  "}},
      {kLlama3, "line1\r\nline2\r\n\r\n  \r\n",
       {"line", "1", "\r\n", "line", "2", "\r\n\r\n  \r\n"}},
      {kLlama3, "\u4e2d\u6587\u5b57 \u65e5\u672c\u8a9e\u3002 \ud55c\uad6d\uc5b4",
       {"\u4e2d\u6587\u5b57", " \u65e5\u672c\u8a9e", "\u3002", " \ud55c\uad6d\uc5b4"}},
      {kLlama3, "e\u0301\u0301 cafe\u0301 \U0001f600\U0001f600 a\u00a0b\u2028c\u3000d",
       {"e", "\u0301\u0301", " cafe", "\u0301", " \U0001f600\U0001f600", " a", "\u00a0b", "\u2028c", "\u3000d"}},
      {kLlama3, "CamelCaseWord HTTPServer iPhone",
       {"CamelCaseWord", " HTTPServer", " iPhone"}},
      {kLlama3, "x = foo(bar)/2; // comment\n\treturn",
       {"x", " =", " foo", "(bar", ")/", "2", ";", " //", " comment", "\n", "\treturn"}},
      {kQwen2, "Hello world's 123   foo!!  \n bar",
       {"Hello", " world", "'s", " ", "1", "2", "3", "  ", " foo", "!!", "  \n", " bar"}},
      {kQwen2, "I'm DON'T she'LL we'Ve they'RE it'S",
       {"I", "'m", " DON", "'T", " she", "'LL", " we", "'Ve", " they", "'RE", " it", "'S"}},
      {kQwen2, "abc\u017f'\u017f 'K \u212a",
       {"abc\u017f", "'\u017f", " '", "K", " \u212a"}},
      {kQwen2, "12345 1234567\t\u0663\u0664\u0665\u0666 \u00b2\u00b3",
       {"1", "2", "3", "4", "5", " ", "1", "2", "3", "4", "5", "6", "7", "\t", "\u0663", "\u0664", "\u0665", "\u0666", " ", "\u00b2", "\u00b3"}},
      {kQwen2, "  leading and trailing  \n\n\n  x  ",
       {" ", " leading", " and", " trailing", "  \n\n\n", " ", " x", "  "}},
      {kQwen2, "line1\r\nline2\r\n\r\n  \r\n",
       {"line", "1", "\r\n", "line", "2", "\r\n\r\n  \r\n"}},
      {kQwen2, "\u4e2d\u6587\u5b57 \u65e5\u672c\u8a9e\u3002 \ud55c\uad6d\uc5b4",
       {"\u4e2d\u6587\u5b57", " \u65e5\u672c\u8a9e", "\u3002", " \ud55c\uad6d\uc5b4"}},
      {kQwen2, "e\u0301\u0301 cafe\u0301 \U0001f600\U0001f600 a\u00a0b\u2028c\u3000d",
       {"e", "\u0301\u0301", " cafe", "\u0301", " \U0001f600\U0001f600", " a", "\u00a0b", "\u2028c", "\u3000d"}},
      {kQwen2, "CamelCaseWord HTTPServer iPhone",
       {"CamelCaseWord", " HTTPServer", " iPhone"}},
      {kQwen2, "x = foo(bar)/2; // comment\n\treturn",
       {"x", " =", " foo", "(bar", ")/", "2", ";", " //", " comment", "\n", "\treturn"}},
  };
  for (const Case& c : cases) {
    const Pieces got = pieces(c.pattern, c.text);
    CHECK(got == c.expected);
    if (got != c.expected) std::fprintf(stderr, "  pattern %s on \"%s\"\n", c.pattern, c.text.c_str());
  }
  // GPT-2 as released and tiktoken's r50k rewrite split alike.
  CHECK(pieces(kR50k, "Hello world's 123   foo!!  \n bar") == pieces(kGpt2Original, "Hello world's 123   foo!!  \n bar"));
}

// The regex engine against the hand-written scanners of pretokenize.cpp, on random text.
void test_agrees_with_builtin_scanners() {
  const std::vector<std::string> alphabet = {"a", "Z", "k", "s", "1", "0", " ", " ", "\n", "\r", "\t", "'", "'s",
                                             "'LL", ".", "/", "!", "\u017f", "\u212a", "\u00e9", "e\u0301", "\u4e2d",
                                             "\u0663", "\u00b2", "\u00a0", "\u3000", "\u2028", "\U0001F600", "\u01c5"};
  const std::pair<const char*, const char*> pairs[] = {{"gpt2", kR50k}, {"cl100k", kCl100k}, {"o200k", kO200k}};
  std::mt19937 rng(1234);
  for (auto [name, pattern] : pairs) {
    auto builtin = fastllm::make_pretokenizer(name);
    auto engine = fastllm::make_regex_pretokenizer(pattern);
    CHECK(engine->pattern() == pattern);
    for (int i = 0; i < 2000; ++i) {
      std::string text;
      const int len = static_cast<int>(rng() % 24);
      for (int k = 0; k < len; ++k) text += alphabet[rng() % alphabet.size()];
      std::vector<fastllm::Span> a, b;
      builtin->split(text, a);
      engine->split(text, b);
      CHECK(a == b);
      if (a != b) std::fprintf(stderr, "  %s differs on \"%s\"\n", name, text.c_str());
    }
  }
}

void test_features() {
  CHECK(pieces("a+?", "aaa") == (Pieces{"a", "a", "a"}));
  CHECK(pieces("a{2,3}", "aaaaaaa") == (Pieces{"aaa", "aaa"}));
  CHECK(pieces("a{,2}b", "aaab") == (Pieces{"aab"}));
  CHECK(pieces("a{2,}?", "aaaaa") == (Pieces{"aa", "aa"}));
  CHECK(pieces("x{a", "x{a") == (Pieces{"x{a"}));  // not a quantifier: literal, as in fancy-regex and Python
  CHECK(pieces("a*+a", "aaaa").empty());          // possessive: gives nothing back
  CHECK(pieces("(?>a|ab)c", "abc").empty());      // atomic: `ab` is never tried
  CHECK(pieces("(?:a|ab)c", "abc") == (Pieces{"abc"}));
  CHECK(pieces("(?:a|ab)*+c", "abc") == (Pieces{"c"}));
  CHECK(pieces("\\w+(?=!)", "hi! yo") == (Pieces{"hi"}));
  CHECK(pieces("\\w+(?!\\w|!)", "hi! yo") == (Pieces{"yo"}));
  CHECK(pieces("(?<=\\$)\\d+", "$12 34") == (Pieces{"12"}));
  CHECK(pieces("(?<!\\$)\\b\\d+", "$12 34") == (Pieces{"34"}));
  CHECK(pieces("\\bis\\b", "this is it") == (Pieces{"is"}));
  CHECK(pieces("\\Bis", "this is it") == (Pieces{"is"}));
  CHECK(pieces("^a|a$", "aaa") == (Pieces{"a", "a"}));
  CHECK(pieces("a$", "a\n").empty());                  // Rust's $: the end of the text only
  CHECK(pieces("a\\Z", "a\n\n") == (Pieces{"a"}));     // fancy-regex's \Z: before trailing newlines
  CHECK(pieces("(?m)^\\w", "ab\ncd") == (Pieces{"a", "c"}));
  CHECK(pieces("(?m)\\w$", "ab\ncd") == (Pieces{"b", "d"}));
  CHECK(pieces(".+", "a\nb") == (Pieces{"a", "b"}));
  CHECK(pieces("(?s).+", "a\nb") == (Pieces{"a\nb"}));
  CHECK(pieces("(?x) a b  # comment\n c", "abc") == (Pieces{"abc"}));
  CHECK(pieces("x(?:|a)*", "xaa") == (Pieces{"x"}));  // an empty iteration ends the loop (Rust, Python)
  CHECK(pieces("(?U)a+", "aaa") == (Pieces{"a", "a", "a"}));
  CHECK(pieces("(?P<n>a)(?<m>b)(?#note)", "ab") == (Pieces{"ab"}));
  // Escapes and classes.
  CHECK(matches("\\x41\\x{42}\\u0043\\u{44}\\U00000045\\t\\n\\.\\'\\-", "ABCDE\t\n.'-"));
  CHECK(matches("[\\]\\-a-c^]+", "]-abc^"));
  CHECK(matches("[]a]+", "]a]"));
  CHECK(pieces("[^\\d\\s]+", "ab1 c\u0663d") == (Pieces{"ab", "c", "d"}));
  CHECK(pieces("\\d+", "12\u0663\u00b2") == (Pieces{"12\u0663"}));  // Nd only: U+00B2 is No
  CHECK(pieces("\\w+", "a_1\u00e9\u0301\u24b6-b") == (Pieces{"a_1\u00e9\u0301\u24b6", "b"}));
  CHECK(pieces("\\p{Lu}+|\\p{Nd}+|\\pP+|\\p{Sc}", "AB12.,$x") == (Pieces{"AB", "12", ".,", "$"}));
  CHECK(pieces("\\p{Uppercase_Letter}\\p{^Lu}\\P{Lu}", "Abc") == (Pieces{"Abc"}));
  CHECK(pieces("[\\p{gc=Ll}\\h]+", "abZ09") == (Pieces{"ab", "09"}));
  // Unicode simple case folding: s ~ U+017F LONG S, k ~ U+212A KELVIN SIGN, sigma's three forms.
  CHECK(pieces("(?i)s", "sS\u017f") == (Pieces{"s", "S", "\u017f"}));
  CHECK(pieces("(?i:k)", "kK\u212a") == (Pieces{"k", "K", "\u212a"}));
  CHECK(pieces("(?i)\\u03c3+", "\u03a3\u03c3\u03c2") == (Pieces{"\u03a3\u03c3\u03c2"}));
  CHECK(pieces("(?i)[a-z]+", "Hello\u212a") == (Pieces{"Hello\u212a"}));
  CHECK(pieces("(?i)[^k]", "K\u212ak").empty());
  CHECK(pieces("(?i:a)a", "AaAA") == (Pieces{"Aa"}));  // (?i:...) ends with its group
  CHECK(pieces("(?i)\\p{Lu}", "a\ufb00") == (Pieces{"a"}));  // U+FB00 has no simple case pair
  CHECK(pieces("(?i)\u0131", "Ii\u0131") == (Pieces{"\u0131"}));  // dotless i folds to nothing else
  // find() and fancy-regex's iteration over empty matches.
  fastllm::Span m;
  CHECK(fastllm::Regex("b+").find("aabbc", 0, &m) && m == fastllm::Span(2, 4));
  CHECK(!fastllm::Regex("b+").find("aabbc", 4, &m));
  CHECK(pieces(fastllm::Regex("a*"), "baa", true) == (Pieces{"", "aa"}));
  CHECK(pieces(fastllm::Regex("a*"), "baa").size() == 1);
  CHECK(pieces(fastllm::Regex(""), "\u00e9x", true) == (Pieces{"", "", ""}));  // one per code point
  // Invalid UTF-8: each bad byte is one code point of no category.
  const std::string bad = "a\xff\xc3(b\xe2\x82";
  CHECK(pieces("[^\\s\\p{L}\\p{N}]+", bad) == (Pieces{"\xff\xc3(", "\xe2\x82"}));
  CHECK(pieces(".", bad).size() == bad.size());
  CHECK(pieces("\\p{L}|\\p{Cn}", bad) == (Pieces{"a", "b"}));
}

void test_malformed_patterns_throw() {
  for (const char* p : {"(", "a)", "(?:a", "[a", "[^]", "a**", "*a", "+", "a{2}*?+", "\\", "\\p{Foo}", "\\p{L",
                        "a{3,2}", "a{100001}", "(?<=a+)b", "(?<!a|bc)", "\\1", "(?P=n)", "(?P<n>a)\\k<n>", "[z-a]",
                        "(?Q)", "(?i-)", "(?i-m-s)", "[[a]]", "[a&&b]", "[a--b]", "\\q", "\\xZZ", "\\u12", "\\x{110000}",
                        "\\uD800", "(?(1)a|b)", "\\G", "\\K", "(?=a)*", "^*", "\\b+", "\xff", "(?<n"})
    if (!throws_invalid(p)) std::fprintf(stderr, "  no error for %s\n", p), ++g_failures;
  CHECK(throws_invalid(std::string(300, '(') + std::string(300, ')')));  // nesting limit, not a stack overflow
  CHECK(!throws_invalid(std::string(150, '(') + "a" + std::string(150, ')')));
  CHECK(throws_invalid("(?:(?:(?:a{1000}b){1000}){1000})"));  // too large once repetitions are copied
  std::string message;
  try {
    fastllm::make_regex_pretokenizer("ab(cd");
  } catch (const std::invalid_argument& e) {
    message = e.what();
  }
  CHECK(message.find("position 2") != std::string::npos && message.find("unclosed group") != std::string::npos);
}

// 1M-character texts: no crash, no deep recursion, every byte covered by the tokenizer patterns.
void test_long_texts() {
  const std::string units[] = {" ", "a", "1", "\n", "!", "'", " a", "\r\n", "\u4e2d", "\u00a0", "a1!\n ", "\xff"};
  for (const std::string& unit : units) {
    for (const char* pattern : {kLlama3, kQwen2, kGpt2Original, kCl100k, kO200k, kR50k}) {
      std::string text;  // 1M characters for Llama-3's pattern, 100k for the others (sanitizer time)
      while (text.size() < (pattern == kLlama3 ? 1000000 : 100000) * unit.size()) text += unit;
      auto pre = fastllm::make_regex_pretokenizer(pattern);
      std::vector<fastllm::Span> spans;
      pre->split(text, spans);
      size_t covered = 0, next = 0;
      bool ordered = true;
      for (auto [a, b] : spans) {
        ordered = ordered && a >= next && b > a;
        covered += b - a, next = b;
      }
      CHECK(ordered);
      CHECK(covered == text.size());
    }
  }
  // A run of spaces before a letter: `\s+$` must not rescan the run from every start (DeepSeek).
  const std::string spaces = std::string(1000000, ' ') + "x";
  CHECK(pieces("\\s?[A-Za-z]+|\\s+$|\\p{N}+", spaces) == (Pieces{" x"}));
}

// Backtracking blow-ups are either cut down by memoization or stopped by the step budget.
void test_pathological_patterns() {
  const auto start = std::chrono::steady_clock::now();
  CHECK(pieces("(a|a)*b", std::string(20000, 'a')).empty());
  CHECK(pieces("(?:\\w|\\p{L})*x", std::string(100000, 'a')).empty());
  CHECK(pieces("(?:a|a){0,300}b", std::string(2000, 'a')).empty());
  bool threw = false;
  try {
    pieces("(?:x+x+)+y", std::string(100000, 'x'));
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("backtracking") != std::string::npos;
  }
  CHECK(threw);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 60);  // a generous bound for sanitizer builds; normally well under a second
}

}  // namespace

int main() {
  test_tokenizer_patterns();
  test_agrees_with_builtin_scanners();
  test_features();
  test_malformed_patterns_throw();
  test_long_texts();
  test_pathological_patterns();
  if (g_failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_regex: all checks passed\n");
  return 0;
}
