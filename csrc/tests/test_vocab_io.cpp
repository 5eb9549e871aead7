// Unit tests of the tokenizer.json reader (vocab_io.cpp) without Python (ctest; also run under ASan + UBSan).
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bpe.h"
#include "check.h"

using namespace fastllm;

static std::string write_temp(const std::string& name, const std::string& text) {
  std::string path = "/tmp/fastllm_test_vocab_io_" + name + ".json";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return path;
}

// A byte-level vocabulary of the 256 bytes (ids 0..255) plus "ab" (256) and "abc" (257), as JSON members.
static std::string byte_vocab_json() {
  std::string out;
  for (int b = 0; b < 256; ++b) {
    std::string key = byte_to_unicode(static_cast<uint8_t>(b));
    if (key == "\"" || key == "\\") key = "\\" + key;
    if (b == 'z') key = "\\u007a";  // an escape that is a byte-level character
    out += "\"" + key + "\": " + std::to_string(b) + ",\n";
  }
  return out + "\"ab\": 256, \"abc\": 257";
}

static std::vector<uint32_t> encode(const CoreBPE& bpe, const std::string& s) {
  std::vector<uint32_t> out;
  bpe.encode_ordinary(s, out);
  return out;
}

static void test_reads_vocab_and_merges() {
  // Merges in both spellings, placed before the vocabulary; keys spelled with escapes; decoys elsewhere.
  std::string text = "{\"decoder\": {\"model\": {\"vocab\": 1}}, \"m\\u006fdel\": {\"type\": \"BPE\", "
                     "\"merges\": [[\"a\", \"b\"], \"ab c\"], \"vocab\": {" +
                     byte_vocab_json() + "}, \"ignore_merges\": false}, \"added_tokens\": []}";
  TokenizerJson doc = load_tokenizer_json(write_temp("ok", text));
  CHECK(doc.has_vocab && doc.has_merges);
  CHECK(doc.vocab_problem.kind == TokenizerJson::Problem::Kind::kNone);
  CHECK(doc.merges_problem.kind == TokenizerJson::Problem::Kind::kNone);
  CHECK(doc.vocab.size() == 258 && doc.merges.size() == 2);
  CHECK(doc.rest == "{\"decoder\": {\"model\": {\"vocab\": 1}}, \"m\\u006fdel\": {\"type\": \"BPE\", \"merges\": [], "
                    "\"vocab\": {}, \"ignore_merges\": false}, \"added_tokens\": []}");
  auto bpe = CoreBPE::from_tokenizer_json(doc, {}, "gpt2", false);
  CHECK(encode(*bpe, "abc") == std::vector<uint32_t>({257}));
  CHECK(encode(*bpe, "abz") == std::vector<uint32_t>({256, 'z'}));
  CHECK(bpe->merges() == CoreBPE::Merges({{'a', 'b'}, {256, 'c'}}));
}

static void test_problems_are_recorded() {
  auto read = [](const std::string& vocab_extra, const std::string& merges) {
    return load_tokenizer_json(
        write_temp("problem", "{\"model\": {\"vocab\": {" + byte_vocab_json() + vocab_extra + "}, \"merges\": " + merges + "}}"));
  };
  using Kind = TokenizerJson::Problem::Kind;
  TokenizerJson doc = read(", \"x1\": 1.5", "[]");
  CHECK(doc.vocab_problem.kind == Kind::kVocabId && doc.vocab_problem.item == "\"x1\"" &&
        doc.vocab_problem.value == "1.5");
  CHECK(read(", \"x1\": -2", "[]").vocab_problem.kind == Kind::kVocabId);
  CHECK(read(", \"x1\": -0", "[]").vocab_problem.kind == Kind::kNone);  // as Python: -0 is the int 0
  CHECK(read(", \"x1\": 99999999999999999999999", "[]").vocab_problem.kind == Kind::kVocabIdTooLarge);
  CHECK(read(", \"x \": 300", "[]").vocab_problem.kind == Kind::kVocabChar);
  CHECK(read(", \"\\u4e2d\": 300", "[]").vocab_problem.kind == Kind::kVocabChar);
  doc = read("", "[[\"a\", \"b\"], [\"a\", \"b\", \"c\"]]");
  CHECK(doc.merges_problem.kind == Kind::kMergeShape && doc.merges_problem.index == 1 &&
        doc.merges_problem.item == "[\"a\", \"b\", \"c\"]");
  CHECK(read("", "[\"a b c\"]").merges_problem.kind == Kind::kMergeShape);
  CHECK(read("", "[5]").merges_problem.kind == Kind::kMergeShape);
  doc = read("", "[[\"a\", \"\\u4e2d\"]]");
  CHECK(doc.merges_problem.kind == Kind::kMergeUnknown && doc.merges_problem.side == 1);
  // A symbol not in the vocabulary is found when the core is built.
  doc = read("", "[[\"a\", \"b\"], \"xyz b\"]");
  CHECK(doc.merges_problem.kind == Kind::kNone);
  CHECK(throws([&] { CoreBPE::from_tokenizer_json(doc, {}, "gpt2", false); },
               "model.merges[1] = 'xyz b': 'xyz' is not in model.vocab"));
  doc = read("", "[[\"b\", \"a\"]]");
  CHECK(throws([&] { CoreBPE::from_tokenizer_json(doc, {}, "gpt2", false); },
               "model.merges[0] = ['b', 'a'] makes a token that is not in model.vocab"));
}

static void test_json_errors() {
  std::string good = "{\"model\": {\"vocab\": {" + byte_vocab_json() + "}, \"merges\": [[\"a\", \"b\"]]}}";
  auto fails = [](const std::string& text, const std::string& needle) {
    std::string path = write_temp("bad", text);  // every message starts with the file
    return throws([&] { load_tokenizer_json(path); }, needle) && throws([&] { load_tokenizer_json(path); }, path + ": ");
  };
  CHECK(fails("", "not valid JSON (line 1 column 1: unexpected end of file)"));
  for (size_t cut : {size_t{5}, size_t{100}, good.size() - 10, good.size() - 1})
    CHECK(fails(good.substr(0, cut), "not valid JSON"));
  CHECK(fails(good + "x", "extra data"));
  CHECK(fails("{\"a\": \"\\q\"}", "bad escape"));
  CHECK(fails("{\"a\": \"\\u12\"}", "bad \\u escape"));
  CHECK(fails("{\"model\": {\"vocab\": {\"\\x\": 1}}}", "bad escape"));
  CHECK(fails("{\"a\": \"\xff\"}", "invalid UTF-8"));
  CHECK(fails("{\"a\": \"\xc1\xa1\"}", "invalid UTF-8"));      // overlong 'a'
  CHECK(fails("{\"a\": \"\xed\xa0\x80\"}", "invalid UTF-8"));  // an encoded surrogate
  CHECK(fails("{\"a\": \"\xf4\x90\x80\x80\"}", "invalid UTF-8"));  // past U+10FFFF
  CHECK(fails("{\"model\": {\"vocab\": {\"\xc1\xa1\": 1}}}", "invalid UTF-8"));
  CHECK(fails("{\"model\": {\"vocab\": {}, \"merges\": [\"a \xe0\x80\"]}}", "invalid UTF-8"));
  CHECK(fails("{\"a\": \"x\ny\"}", "control character"));
  CHECK(fails("{\"a\": NaN}", "expected a value"));
  CHECK(fails("{\"a\": 01}", "bad number"));
  CHECK(fails("{\"a\": 1.}", "bad number"));
  CHECK(fails("{\"a\": [1,]}", "expected a value"));
  CHECK(fails("{\"a\": " + std::string(200, '[') + std::string(200, ']') + "}", "nested deeper than 128"));
  CHECK(fails("{\"model\": {}, \"mod\\u0065l\": {}}", "line 1: \"model\" appears twice in the top-level object"));
  CHECK(fails("{\"model\": {\"vocab\": {}, \"vocab\": 1}}", "\"vocab\" appears twice in model"));
  CHECK(fails("{\"model\": {\"merges\": 1, \"merges\": []}}", "\"merges\" appears twice in model"));
  CHECK(throws([] { load_tokenizer_json("/nonexistent/fastllm/tokenizer.json"); }, "cannot open"));
  // Deep nesting elsewhere is fine up to the limit, and so are values of every kind.
  TokenizerJson doc = load_tokenizer_json(write_temp(
      "kinds", "{\"a\": [true, false, null, -1.5e+3, 0, \"\\ud83d\\ude00\\ud800\", {}], \"b\": " +
                   std::string(100, '[') + std::string(100, ']') + "}"));
  CHECK(!doc.has_vocab && !doc.has_merges);
}

int main() {
  test_reads_vocab_and_merges();
  test_problems_are_recorded();
  test_json_errors();
  if (g_failures > 0) std::fprintf(stderr, "%d check(s) failed\n", g_failures);
  return g_failures > 0 ? 1 : 0;
}
