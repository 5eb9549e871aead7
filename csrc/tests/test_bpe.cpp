// Unit tests of the BPE core without Python (ctest; also run under ASan + UBSan).
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "check.h"
#include "bpe.h"

using namespace fastllm;

static std::vector<uint32_t> ids(std::initializer_list<uint32_t> l) { return l; }

static CoreBPE::Vocab byte_vocab() {
  CoreBPE::Vocab v;
  for (int b = 0; b < 256; ++b) v.add(std::string(1, static_cast<char>(b)), b);
  return v;
}

static std::vector<uint32_t> encode(const CoreBPE& bpe, const std::string& s) {
  std::vector<uint32_t> out;
  bpe.encode_ordinary(s, out);
  return out;
}

static std::string decode(const CoreBPE& bpe, const std::vector<uint32_t>& v) {
  std::string out;
  bpe.decode(v.data(), v.size(), out);
  return out;
}

// A naive rank-based BPE (tiktoken semantics), the oracle for the merge paths.
static std::vector<uint32_t> naive_ranks(const CoreBPE& bpe, const std::string& piece) {
  uint32_t whole = bpe.token_to_id(piece);
  if (whole != CoreBPE::kNoToken) return {whole};
  std::vector<std::string> parts;
  for (char c : piece) parts.emplace_back(1, c);
  while (parts.size() > 1) {
    size_t best = SIZE_MAX;
    uint32_t best_rank = CoreBPE::kNoToken;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      uint32_t r = bpe.token_to_id(parts[i] + parts[i + 1]);
      if (r < best_rank) best_rank = r, best = i;
    }
    if (best == SIZE_MAX) break;
    parts[best] += parts[best + 1];
    parts.erase(parts.begin() + static_cast<long>(best) + 1);
  }
  std::vector<uint32_t> out;
  for (auto& p : parts) out.push_back(bpe.token_to_id(p));
  return out;
}

static void test_ranks_semantics() {
  auto v = byte_vocab();
  v.add("ab", 256);
  v.add("bc", 257);
  v.add("abc", 258);
  v.add("aa", 259);
  v.add("aaaa", 260);
  auto bpe = CoreBPE::from_ranks(v, {}, "gpt2");
  CHECK(encode(*bpe, "abc") == ids({258}));              // whole token
  CHECK(encode(*bpe, "abcd") == ids({258, 'd'}));        // ab, then abc
  CHECK(encode(*bpe, "bcd") == ids({257, 'd'}));
  CHECK(encode(*bpe, "aaaaa") == ids({260, 'a'}));       // leftmost pair first
  CHECK(decode(*bpe, encode(*bpe, "xyz abc")) == "xyz abc");
  // Both merge paths (scan for short pieces, heap for long ones) agree with the naive BPE.
  for (size_t n : {2, 3, 7, 95, 96, 97, 98, 200, 1001}) {
    std::string s(n, 'a');
    CHECK(encode(*bpe, s) == naive_ranks(*bpe, s));
    std::string t;
    for (size_t i = 0; i < n; ++i) t += "abca"[i % 4];
    CHECK(encode(*bpe, t) == naive_ranks(*bpe, t));
  }
}

// A ranks vocabulary's merges() are the splits BPE makes its tokens with (by rank), and an HF-semantics
// tokenizer over them gives the ranks tokenizer's ids, also where a token's part ranks after it.
static void test_merges_of_ranks() {
  auto v = byte_vocab();
  v.add("abc", 256);  // built from "ab" + "c", though "ab" ranks after it
  v.add("ab", 257);
  v.add("cd", 258);
  v.add("bc", 259);   // another split of "abc", which never merges into it
  v.add("xyz", 260);  // no split into two tokens: BPE never builds it (only the whole-piece shortcut)
  v.add("bcd", 261);  // "b" + "cd": "cd" merges first in "bcd"
  auto bpe = CoreBPE::from_ranks(v, {}, "gpt2");
  CHECK(bpe->merges() == CoreBPE::Merges({{257, 'c'}, {'a', 'b'}, {'c', 'd'}, {'b', 'c'}, {'b', 258}}));
  auto hf = CoreBPE::from_merges(v, bpe->merges(), {}, "gpt2", /*ignore_merges=*/true);
  std::string alphabet = "abcdxyz";
  uint32_t seed = 1;
  for (int k = 0; k < 2000; ++k) {
    std::string s;
    for (int i = 0; i < 1 + k % 40; ++i) s += alphabet[((seed = seed * 1103515245 + 12345) >> 16) % 7];
    CHECK(encode(*hf, s) == encode(*bpe, s));
  }
  CHECK(encode(*hf, "abcx") == ids({256, 'x'}) && encode(*hf, "xyz") == ids({260}));
}

static void test_merges_semantics() {
  auto v = byte_vocab();
  v.add("ab", 256);
  v.add("bc", 257);
  v.add("abc", 258);  // in the vocabulary, but no merge makes it from "ab" + "c"
  v.add("cd", 259);
  CoreBPE::Merges m = {{'b', 'c'}, {'a', 'b'}, {'c', 'd'}};
  auto bpe = CoreBPE::from_merges(v, m, {}, "gpt2");
  CHECK(encode(*bpe, "abc") == ids({'a', 257}));  // (b, c) has priority; the whole-token shortcut is not taken
  CHECK(encode(*bpe, "abcd") == ids({'a', 257, 'd'}));
  CHECK(encode(*bpe, "abd") == ids({256, 'd'}));
  auto relaxed = CoreBPE::from_merges(v, m, {}, "gpt2", /*ignore_merges=*/true);
  CHECK(encode(*relaxed, "abc") == ids({258}));
  CHECK(bpe->merges() == m);
  CHECK(throws([&] { CoreBPE::from_merges(v, {{'a', 'z'}}, {}, "gpt2"); }, "not in the vocabulary"));
}

static void test_specials() {
  auto v = byte_vocab();
  std::vector<SpecialToken> sp = {{"<|end|>", 300, true}, {"<|end|>x", 301, true}, {"<pad>", 302, false}};
  auto bpe = CoreBPE::from_ranks(v, sp, "gpt2");
  std::vector<uint32_t> out;
  using P = SpecialPolicy;
  CHECK(bpe->encode("a<|end|>b", {P::kDisallowed, P::kDisallowed}, out) == 0);
  out.clear();
  CHECK(bpe->encode("a<|end|>xb", {P::kAllowed, P::kAllowed}, out) == -1);
  CHECK(out == ids({'a', 301, 'b'}));  // the longest special at a position
  out.clear();
  CHECK(bpe->encode("<|end|>", {P::kAllowed, P::kDisallowed}, out) == -1);
  CHECK(out == ids({300}));
  out.clear();
  CHECK(bpe->encode("a<|end|>", {P::kAsText, P::kAsText}, out) == -1);
  CHECK(decode(*bpe, out) == "a<|end|>" && out.size() > 2);
  out.clear();
  CHECK(bpe->encode("<pad><pad>", {}, out) == -1);  // non-special added tokens always split out
  CHECK(out == ids({302, 302}));
  CHECK(bpe->is_special(300) && !bpe->is_special(65));
  CHECK(throws([&] { CoreBPE::from_ranks(byte_vocab(), {{"a", 5, true}}, "gpt2"); }, "both the token"));
}

static void test_decode_and_errors() {
  auto bpe = CoreBPE::from_ranks(byte_vocab(), {}, "gpt2");
  std::string out;
  std::vector<uint32_t> bad = {'a', 256};
  CHECK(throws([&] { bpe->decode(bad.data(), bad.size(), out); }, "256"));
  std::string invalid = "ok \xff\xfe\xc3 end\xe2\x82";  // invalid UTF-8 must round-trip byte for byte
  CHECK(decode(*bpe, encode(*bpe, invalid)) == invalid);
  CHECK(encode(*bpe, "").empty());
  auto v = byte_vocab();
  v.tokens.pop_back();
  CHECK(throws([&] { CoreBPE::from_ranks(v, {}, "gpt2"); }, "single byte"));
  v = byte_vocab();
  v.add("a", 300);
  CHECK(throws([&] { CoreBPE::from_ranks(v, {}, "gpt2"); }, "appears twice"));
}

static std::string write_tmp(const std::string& name, const std::string& text) {
  std::string path = "/tmp/fastllm_test_bpe_" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

static void test_loaders() {
  std::string bad_b64 = write_tmp("bad.tiktoken", "YQ== 0\n!!!! 1\n");
  CHECK(throws([&] { load_tiktoken_ranks(bad_b64); }, bad_b64 + ": line 2: the token is not valid base64"));
  std::string bad_rank = write_tmp("rank.tiktoken", "YQ== zero\n");
  CHECK(throws([&] { load_tiktoken_ranks(bad_rank); }, "line 1: the rank"));
  CHECK(throws([&] { load_tiktoken_ranks("/nonexistent/x.tiktoken"); }, "cannot open"));
  std::string enc = write_tmp("encoder.json", "{\"a\": 0, \"b\": 1, \"ab\": 2");
  std::string merges = write_tmp("vocab.bpe", "#version: 0.2\na b\n");
  CHECK(throws([&] { load_gpt2_files(enc, merges); }, enc + ": line 1: expected '}'"));
  // A byte-level vocabulary: the 256 bytes (byte 0x20 written as the escape \u0120) and "ab".
  std::string json = "{";
  for (int b = 0; b < 256; ++b) {
    std::string key = b == ' ' ? "\\u0120" : byte_to_unicode(static_cast<uint8_t>(b));
    if (key == "\"" || key == "\\") key = "\\" + key;
    json += "\"" + key + "\": " + std::to_string(b) + ",\n";
  }
  std::string enc_ok = write_tmp("encoder_ok.json", json + "\"ab\": 256}");
  std::string merges_bad = write_tmp("vocab_bad.bpe", "#version: 0.2\na b\na \xc4\xa3\n");
  CHECK(throws(
      [&] {
        auto [v, bad] = load_gpt2_files(enc_ok, merges_bad);
        CoreBPE::from_merge_text(v, bad, {}, "gpt2", enc_ok);
      },
      merges_bad + ": line 3: 'a \xc4\xa3' makes a token that is not in " + enc_ok));
  std::string merges_unknown = write_tmp("vocab_unknown.bpe", "#version: 0.2\nabc b\n");
  CHECK(throws(
      [&] {
        auto [v, bad] = load_gpt2_files(enc_ok, merges_unknown);
        CoreBPE::from_merge_text(v, bad, {}, "gpt2", enc_ok);
      },
      merges_unknown + ": line 2: 'abc' is not in " + enc_ok));
  std::string merges_odd = write_tmp("vocab_odd.bpe", "#version: 0.2\na b\n\xe4\xb8\x80 b\n");
  CHECK(throws([&] { load_gpt2_files(enc_ok, merges_odd); }, merges_odd + ": line 3: a symbol has a character"));
  auto [vocab, m] = load_gpt2_files(enc_ok, merges);
  CHECK(vocab.size() == 257 && vocab.token(32) == " " && vocab.token(34) == "\"" && m.merges.size() == 1);
  auto bpe = CoreBPE::from_merge_text(vocab, m, {}, "gpt2", enc_ok);
  CHECK(encode(*bpe, "ab") == ids({256}) && encode(*bpe, "a b") == ids({'a', ' ', 'b'}));
}

static void test_gpt2_assets() {
  std::string dir = FASTLLM_ASSETS;
  auto [vocab, merges] = load_gpt2_files(dir + "/encoder.json", dir + "/vocab.bpe");
  auto bpe = CoreBPE::from_merge_text(vocab, merges, {{"<|endoftext|>", 50256, true}}, "gpt2", "encoder.json");
  CHECK(bpe->vocab_size() == 50257);
  CHECK(encode(*bpe, "hello world") == ids({31373, 995}));  // as in tiktoken's own tests
  std::vector<uint32_t> out;
  CHECK(bpe->encode("hello <|endoftext|>", {SpecialPolicy::kAllowed}, out) == -1);
  CHECK(out == ids({31373, 220, 50256}));
  std::string text = "Unicode: caf\xc3\xa9, \xe4\xbd\xa0\xe5\xa5\xbd, emoji \xf0\x9f\x98\x80!\n\n  x";
  CHECK(decode(*bpe, encode(*bpe, text)) == text);
  CHECK(bpe->merges().size() == merges.merges.size());
}

int main() {
  test_ranks_semantics();
  test_merges_of_ranks();
  test_merges_semantics();
  test_specials();
  test_decode_and_errors();
  test_loaders();
  test_gpt2_assets();
  if (g_failures) std::fprintf(stderr, "%d check(s) failed\n", g_failures);
  else std::printf("test_bpe: all checks passed\n");
  return g_failures ? 1 : 0;
}
