// Unit tests of the tokenizer.json reader (tokenizer_json.cpp) without Python (ctest; also run under ASan + UBSan).
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

// The vocabulary and merges as read, for comparing layouts: "id:bytes" per token, "left|right" per merge.
static std::string contents(const TokenizerJson& doc) {
  std::string out;
  for (size_t i = 0; i < doc.vocab.size(); ++i)
    out += std::to_string(doc.vocab.tokens[i].id) + ":" + std::string(doc.vocab.token(i)) + "\n";
  for (const TokenizerJson::Merge& m : doc.merges) {
    const char* p = doc.merge_bytes.get() + m.off;
    uint32_t right_len = m.right_len & ~TokenizerJson::Merge::kList;
    out += std::string(p, m.left_len) + "|" + std::string(p + m.left_len, right_len) + "\n";
  }
  return out;
}

// The reader's fast path (plain entries) and its general path (escapes, odd spacing) read the same
// entries alike, in every layout: Tokenizer.save's one entry per line, HF's indented one, "left right".
static void test_layouts_read_alike() {
  std::vector<std::pair<std::string, uint32_t>> vocab;  // byte-level keys
  for (int b = 0; b < 256; ++b) vocab.push_back({byte_to_unicode(static_cast<uint8_t>(b)), static_cast<uint32_t>(b)});
  vocab.push_back({"ab", 256});
  vocab.push_back({"\xc4\xa0" "a", 257});  // "Ġa": " a"
  vocab.push_back({"\xc4\xa0" "ab", 258});
  vocab.push_back({"\xc4\x8a\xc4\x8a", 12345678});  // "\n\n", an 8-digit id
  std::vector<std::pair<std::string, std::string>> merges = {{"a", "b"}, {"\xc4\xa0", "a"}, {"\xc4\xa0" "a", "b"}};
  auto quoted = [](const std::string& key, bool escape) {
    std::string out = "\"";
    for (size_t i = 0; i < key.size();) {
      auto c = static_cast<unsigned char>(key[i]);
      size_t len = c < 0x80 ? 1 : 2;  // the alphabet is below U+0800
      uint32_t cp = len == 1 ? c : ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(key[i + 1]) & 0x3Fu);
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\u%04x", cp);
      if (escape) out += hex;
      else if (c == '"' || c == '\\') out += std::string("\\") + key[i];
      else out += key.substr(i, len);
      i += len;
    }
    return out + "\"";
  };
  auto layout = [&](bool escape, const std::string& sep, const std::string& indent, bool strings) {
    std::string out = "{\"model\": {\"vocab\": {" + sep;
    for (size_t i = 0; i < vocab.size(); ++i)
      out += indent + quoted(vocab[i].first, escape) + ":" + (escape ? "  " : "") + std::to_string(vocab[i].second) +
             (i + 1 < vocab.size() ? "," + sep : sep);
    out += "}, \"merges\": [" + sep;
    for (size_t i = 0; i < merges.size(); ++i) {
      if (strings) out += indent + quoted(merges[i].first + " " + merges[i].second, escape);
      else out += indent + "[" + sep + indent + indent + quoted(merges[i].first, escape) + "," + sep + indent + indent +
                  quoted(merges[i].second, escape) + sep + indent + "]";
      out += i + 1 < merges.size() ? "," + sep : sep;
    }
    return out + "]}}";
  };
  TokenizerJson compact = load_tokenizer_json(write_temp("compact", layout(false, "\n", "", false)));
  CHECK(compact.vocab.size() == vocab.size() && compact.merges.size() == merges.size());
  std::string expected = contents(compact);
  CHECK(expected.find("12345678:\n\n\n") != std::string::npos && expected.find(" a|b\n") != std::string::npos);
  for (bool escape : {false, true})
    for (const char* indent : {"", " ", "      ", "        ", "\t"})
      for (bool strings : {false, true}) {
        TokenizerJson doc = load_tokenizer_json(write_temp("layout", layout(escape, "\r\n", indent, strings)));
        CHECK(doc.vocab_problem.kind == TokenizerJson::Problem::Kind::kNone);
        CHECK(doc.merges_problem.kind == TokenizerJson::Problem::Kind::kNone);
        CHECK(contents(doc) == expected);
        CHECK(doc.merges.size() == 3 && ((doc.merges[0].right_len & TokenizerJson::Merge::kList) != 0) == !strings);
      }
  // Entries the fast path leaves to the general one, which reports them.
  auto problem = [&](const std::string& entry, const std::string& merge) {
    return load_tokenizer_json(write_temp("odd", "{\"model\": {\"vocab\": {\"a\": 0, " + entry + "}, \"merges\": [" +
                                                     merge + "]}}"));
  };
  using Kind = TokenizerJson::Problem::Kind;
  CHECK(problem("\"b\": 2.5e1", "").vocab_problem.kind == Kind::kVocabId);
  CHECK(problem("\"b\": 1e1", "").vocab_problem.kind == Kind::kVocabId);
  CHECK(problem("\"b\": 16777216", "").vocab_problem.kind == Kind::kVocabIdTooLarge);
  CHECK(problem("\"b\": 123456789", "").vocab_problem.kind == Kind::kVocabIdTooLarge);
  CHECK(problem("\"b\": -0", "").vocab.size() == 2);
  CHECK(problem("\"b\\u0000\": 1", "").vocab_problem.kind == Kind::kVocabChar);
  CHECK(problem("\"b\": 1", "\"a  b\"").merges_problem.kind == Kind::kMergeShape);
  CHECK(problem("\"b\": 1", "[\"a\", \"b\", \"a\"]").merges_problem.kind == Kind::kMergeShape);
  CHECK(problem("\"b\": 1", "[\"a\", 1]").merges_problem.kind == Kind::kMergeShape);
  CHECK(problem("\"b\": 1", "[\"a\", \"\\u0000\"]").merges_problem.kind == Kind::kMergeUnknown);
  CHECK(problem("\"b\": 1", "\"a\\u0020b\"").merges.size() == 1);
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
  test_layouts_read_alike();
  test_problems_are_recorded();
  test_json_errors();
  if (g_failures > 0) std::fprintf(stderr, "%d check(s) failed\n", g_failures);
  return g_failures > 0 ? 1 : 0;
}
