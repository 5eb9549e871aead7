// The linear-time merge (bpe_backtrack.cpp) against the queue merge, the O(n^2) scan and a naive BPE,
// on vocabularies trained here on small alphabets (where merges interact most), on random vocabularies
// (unreachable tokens, priorities that do not grow towards the root) and on GPT-2's.
#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bpe.h"
#include "check.h"
#include "prefix_trie.h"

using namespace fastllm;
using Algo = CoreBPE::MergeAlgo;

static std::vector<uint32_t> merge(const CoreBPE& bpe, const std::string& s, Algo algo) {
  std::vector<uint32_t> out;
  if (!bpe.merge_piece(s, algo, out)) out = {CoreBPE::kNoToken};
  return out;
}

// Naive BPE: the pair with the lowest priority merges first, leftmost among equals. priority(a, b)
// returns UINT32_MAX for pairs that do not merge.
template <typename Priority>
static std::vector<uint32_t> naive(const CoreBPE& bpe, const std::string& s, Priority priority) {
  std::vector<uint32_t> parts;
  for (char c : s) parts.push_back(bpe.token_to_id(std::string(1, c)));
  while (true) {
    size_t best = SIZE_MAX;
    uint32_t best_p = UINT32_MAX;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      uint32_t p = priority(parts[i], parts[i + 1]);
      if (p < best_p) best_p = p, best = i;
    }
    if (best == SIZE_MAX) return parts;
    std::string joined(bpe.token_bytes(parts[best]));
    joined += bpe.token_bytes(parts[best + 1]);
    parts[best] = bpe.token_to_id(joined);
    parts.erase(parts.begin() + static_cast<long>(best) + 1);
  }
}

static std::vector<uint32_t> naive_ranks(const CoreBPE& bpe, const std::string& s) {
  return naive(bpe, s, [&](uint32_t a, uint32_t b) {
    std::string joined(bpe.token_bytes(a));
    joined += bpe.token_bytes(b);
    return bpe.token_to_id(joined);  // kNoToken == UINT32_MAX when absent
  });
}

static std::vector<uint32_t> naive_merges(const CoreBPE& bpe, const std::string& s, const CoreBPE::Merges& m) {
  std::map<std::pair<uint32_t, uint32_t>, uint32_t> prio;
  for (size_t i = m.size(); i-- > 0;) prio[m[i]] = static_cast<uint32_t>(i);
  return naive(bpe, s, [&](uint32_t a, uint32_t b) {
    auto it = prio.find({a, b});
    return it == prio.end() ? UINT32_MAX : it->second;
  });
}

static std::string random_text(std::mt19937& rng, const std::string& alphabet, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
  return s;
}

// BPE training on one piece of `text`: repeatedly merge the most frequent adjacent pair (ties: lowest
// ids) whose bytes are not a token yet. Ids 0..255 are the bytes; merge i makes id 256 + i.
static void train(const std::string& text, size_t num_merges, CoreBPE::Vocab& vocab, CoreBPE::Merges& merges) {
  vocab = CoreBPE::Vocab();
  merges.clear();
  std::vector<std::string> bytes;
  std::map<std::string, uint32_t> ids;
  for (int b = 0; b < 256; ++b) {
    bytes.emplace_back(1, static_cast<char>(b));
    ids[bytes.back()] = static_cast<uint32_t>(b);
  }
  std::vector<uint32_t> seq;
  for (char c : text) seq.push_back(static_cast<unsigned char>(c));
  while (merges.size() < num_merges) {
    std::map<std::pair<uint32_t, uint32_t>, size_t> count;
    for (size_t i = 0; i + 1 < seq.size(); ++i) ++count[{seq[i], seq[i + 1]}];
    std::pair<uint32_t, uint32_t> best{0, 0};
    size_t best_n = 0;
    for (auto& [pr, n] : count)
      if (n > best_n && !ids.count(bytes[pr.first] + bytes[pr.second])) best = pr, best_n = n;
    if (best_n < 2) break;
    uint32_t t = static_cast<uint32_t>(bytes.size());
    bytes.push_back(bytes[best.first] + bytes[best.second]);
    ids[bytes.back()] = t;
    merges.push_back(best);
    std::vector<uint32_t> next;
    for (size_t i = 0; i < seq.size(); ++i) {
      if (i + 1 < seq.size() && seq[i] == best.first && seq[i + 1] == best.second) next.push_back(t), ++i;
      else next.push_back(seq[i]);
    }
    seq.swap(next);
  }
  for (uint32_t id = 0; id < bytes.size(); ++id) vocab.add(bytes[id], id);
}

static void test_prefix_trie() {
  std::vector<std::string_view> keys = {"ab", "a", "abc", "b", "bcd", std::string_view("\xff\x00z", 3)};
  std::vector<uint32_t> values = {10, 11, 12, 13, 14, 15}, node_of, longest_prefix;
  PrefixTrie trie;
  trie.build(keys, values, node_of, longest_prefix);
  CHECK(trie.longest("abcd", 4) == 12 && trie.longest("abd", 3) == 10 && trie.longest("bc", 2) == 13);
  CHECK(trie.longest("x", 1) == PrefixTrie::kNone && trie.longest("ab", 1) == 11);
  CHECK(trie.longest("\xff\x00zz", 4) == 15 && trie.longest("\xff\x00", 2) == PrefixTrie::kNone);
  CHECK(longest_prefix[2] == 0 && longest_prefix[0] == 1 && longest_prefix[1] == PrefixTrie::kNone);
  CHECK(longest_prefix[4] == 3 && longest_prefix[5] == PrefixTrie::kNone);
  trie.set_value(node_of[0], PrefixTrie::kNone);  // "ab" removed: "abd" falls back to "a"
  CHECK(trie.longest("abd", 3) == 11);
}

static void test_trained_vocabularies() {
  std::mt19937 rng(1);
  const std::string alphabets[] = {"ab", "abc", "aab", "abcd", "ab\xc3\xa9"};
  for (int round = 0; round < 10; ++round) {
    const std::string& alphabet = alphabets[round % 5];
    CoreBPE::Vocab vocab;
    CoreBPE::Merges m;
    train(random_text(rng, alphabet, 3000), 40 + rng() % 200, vocab, m);
    auto ranks = CoreBPE::from_ranks(vocab, {}, "gpt2");
    auto merges = CoreBPE::from_merges(vocab, m, {}, "gpt2");
    for (int trial = 0; trial < 60; ++trial) {
      size_t n = 1 + rng() % (trial % 6 == 0 ? 2000 : 120);
      std::string s = trial % 3 == 0 ? std::string(n, alphabet[0]) : random_text(rng, alphabet, n);
      std::vector<uint32_t> r = merge(*ranks, s, Algo::kLinear), g = merge(*merges, s, Algo::kLinear);
      CHECK(r == merge(*ranks, s, Algo::kQueue));
      CHECK(g == merge(*merges, s, Algo::kQueue));
      if (n <= 96) {
        CHECK(r == merge(*ranks, s, Algo::kSmall));
        CHECK(g == merge(*merges, s, Algo::kSmall));
      }
      if (n <= 300) {
        CHECK(r == naive_ranks(*ranks, s));
        CHECK(g == naive_merges(*merges, s, m));
      }
    }
  }
}

// Random tokens over a small alphabet with random ranks: many are unreachable, and some vocabularies
// build a token from a part of higher rank, which the linear path must refuse (then it returns false).
static void test_random_vocabularies() {
  std::mt19937 rng(2);
  int refused = 0;
  for (int round = 0; round < 40; ++round) {
    CoreBPE::Vocab vocab;
    for (int b = 0; b < 256; ++b) vocab.add(std::string(1, static_cast<char>(b)), b);
    std::map<std::string, bool> seen;
    size_t want = 20 + rng() % 80;
    while (seen.size() < want) seen[random_text(rng, "abc", 2 + rng() % 5)] = true;
    std::vector<uint32_t> perm(seen.size());
    for (uint32_t i = 0; i < perm.size(); ++i) perm[i] = 256 + i;
    std::shuffle(perm.begin(), perm.end(), rng);
    size_t k = 0;
    for (auto& [tok, unused] : seen) vocab.add(tok, perm[k++]);
    auto bpe = CoreBPE::from_ranks(vocab, {}, "gpt2");
    for (int trial = 0; trial < 40; ++trial) {
      std::string s = random_text(rng, "abc", 1 + rng() % 300);
      std::vector<uint32_t> linear = merge(*bpe, s, Algo::kLinear);
      if (linear == std::vector<uint32_t>{CoreBPE::kNoToken}) {
        ++refused;
        break;
      }
      CHECK(linear == merge(*bpe, s, Algo::kQueue));
      CHECK(linear == naive_ranks(*bpe, s));
    }
  }
  CHECK(refused > 0 && refused < 40);  // both kinds occur with this seed
}

static void test_refused_vocabulary_still_exact() {
  CoreBPE::Vocab v;
  for (int b = 0; b < 256; ++b) v.add(std::string(1, static_cast<char>(b)), b);
  v.add("abc", 256);  // built from "ab", which has a higher rank
  v.add("ab", 257);
  auto bpe = CoreBPE::from_ranks(v, {}, "gpt2");
  std::vector<uint32_t> out;
  CHECK(!bpe->merge_piece("abcabc", Algo::kLinear, out));
  std::string s;
  for (int i = 0; i < 300000; ++i) s += "abcab"[i % 5];  // over kBacktrackAfter: asks for the tables
  out.clear();
  bpe->encode_ordinary(s, out);
  CHECK(out == merge(*bpe, s, Algo::kQueue));
  // Short pieces in a text of long ones (where they would take the linear path) merge another way.
  std::string text;
  for (int i = 0; i < 200; ++i) text += s.substr(0, 30 + i % 7) + " " + s.substr(i % 5, 13 + i % 12) + " ";
  out.clear();
  bpe->encode_ordinary(text, out);
  std::vector<uint32_t> expected;
  CoreBPE::from_ranks(v, {}, "gpt2")->encode_ordinary(text, expected);  // never asked for the tables
  CHECK(out == expected);
  CHECK(out.size() > 400);
}

static void test_gpt2_vocabulary() {
  std::string dir = FASTLLM_ASSETS;
  auto [vocab, merges] = load_gpt2_files(dir + "/encoder.json", dir + "/vocab.bpe");
  auto bpe = CoreBPE::from_merge_text(vocab, merges, {}, "gpt2", "encoder.json");
  std::mt19937 rng(3);
  const std::string alphabets[] = {"ab", "aeiou", "abcdefghijklmnopqrstuvwxyz", "=-#", "\xe4\xb8\x80\xe4\xb8\x81\xc3\xa9"};
  for (int trial = 0; trial < 300; ++trial) {
    size_t n = 1 + rng() % (trial % 10 == 0 ? 3000 : 200);
    std::string s = trial % 6 == 5 ? std::string() : random_text(rng, alphabets[trial % 5], n);
    if (s.empty())
      for (size_t i = 0; i < n; ++i) s += static_cast<char>(rng() % 256);
    CHECK(merge(*bpe, s, Algo::kLinear) == merge(*bpe, s, Algo::kQueue));
  }
  // One giant piece through encode_ordinary: past kBacktrackAfter, so it takes the linear path.
  std::string giant = random_text(rng, "abcdefghijklmnopqrstuvwxyz", 600000);
  std::vector<uint32_t> out;
  bpe->encode_ordinary(giant, out);
  CHECK(out == merge(*bpe, giant, Algo::kQueue));
  // Now text mostly of long pieces sends its pieces of 13 to 24 bytes there too (and text of short pieces
  // does not): the same ids as a tokenizer that never built the tables.
  auto fresh = CoreBPE::from_merge_text(vocab, merges, {}, "gpt2", "encoder.json");
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    size_t pieces = 1 + rng() % 20;
    for (size_t k = 0; k < pieces; ++k) {
      size_t n = trial % 2 ? 13 + rng() % 12 : 1 + rng() % 60;
      text += random_text(rng, alphabets[k % 3], n) + (k % 3 == 2 ? ", " : " ");
    }
    std::vector<uint32_t> expected;
    out.clear();
    bpe->encode_ordinary(text, out);
    fresh->encode_ordinary(text, expected);
    CHECK(out == expected);
  }
}

// One piece cut into parts merged on threads (merge_backtrack_parallel): the ids of the serial merge for every
// number of parts and part size, down to parts of one byte, on vocabularies trained on two or three symbols (the
// parts' own encodings agree with the piece's late, if ever) and on GPT-2's.
static std::vector<uint32_t> merge_parts(const CoreBPE& bpe, const std::string& s, unsigned threads, size_t min_part) {
  PieceThreads pt;
  pt.threads = threads;
  pt.min_part = min_part;
  std::vector<uint32_t> out = {7};  // the parts' ids are appended after what `out` holds
  if (!bpe.merge_piece(s, Algo::kLinear, out, pt)) return {CoreBPE::kNoToken};
  out.erase(out.begin());
  return out;
}

static void test_parallel_trained() {
  std::mt19937 rng(4);
  const std::string alphabets[] = {"ab", "abc", "aab", "ab\xc3\xa9"};
  for (int round = 0; round < 8; ++round) {
    const std::string& alphabet = alphabets[round % 4];
    CoreBPE::Vocab vocab;
    CoreBPE::Merges m;
    train(random_text(rng, alphabet, 3000), 60 + rng() % 200, vocab, m);
    auto ranks = CoreBPE::from_ranks(vocab, {}, "gpt2");
    auto merges = CoreBPE::from_merges(vocab, m, {}, "gpt2");
    for (int trial = 0; trial < 24; ++trial) {
      size_t n = 1 + rng() % 1500;
      std::string s;
      switch (trial % 4) {
        case 0: s = std::string(n, alphabet[0]); break;  // a run: the parts' encodings never align
        case 1: s = random_text(rng, alphabet, n); break;
        case 2:
          for (std::string w = random_text(rng, alphabet, 1 + rng() % 7); s.size() < n;) s += w;
          break;
        default: s = random_text(rng, alphabet.substr(0, 2), n / 2) + std::string(n / 2, alphabet[1]);
      }
      for (const CoreBPE* bpe : {ranks.get(), merges.get()}) {
        std::vector<uint32_t> serial = merge(*bpe, s, Algo::kLinear);
        CHECK(serial == merge(*bpe, s, Algo::kQueue));
        for (unsigned threads = 2; threads <= 8; ++threads) {
          size_t min_part = trial % 3 == 0 ? 1 : 1 + rng() % 64;
          CHECK(merge_parts(*bpe, s, threads, min_part) == serial);
        }
      }
    }
  }
}

static void test_parallel_gpt2() {
  std::string dir = FASTLLM_ASSETS;
  auto [vocab, merges] = load_gpt2_files(dir + "/encoder.json", dir + "/vocab.bpe");
  auto bpe = CoreBPE::from_merge_text(vocab, merges, {}, "gpt2", "encoder.json");
  std::mt19937 rng(5);
  const std::string words[] = {"token", "ization", "the", "heaven", "earth", "and", "Lord", "said", "unto", "Moses"};
  auto text_of = [&](int kind, size_t n) {
    std::string s;
    switch (kind) {
      case 0: return random_text(rng, "abcdefghijklmnopqrstuvwxyz", n);
      case 1: while (s.size() < n) s += "tokenization"; break;
      case 2: while (s.size() < n) s += words[rng() % 10]; break;  // words run together
      case 3: return std::string(n, 'a');
      case 4: while (s.size() < n) s += "\xc3\xa9"; break;              // a run of a 2-byte character
      case 5: while (s.size() < n) s += "\xf0\x9f\x98\x80"; break;      // of an emoji
      case 6: return random_text(rng, "\xe4\xb8\x80\xe4\xb8\x81\xc3\xa9", n);  // bytes of multi-byte characters
      default: for (size_t i = 0; i < n; ++i) s += static_cast<char>(rng() % 256);
    }
    return s;
  };
  for (int trial = 0; trial < 64; ++trial) {
    std::string s = text_of(trial % 8, 1 + rng() % 6000);
    std::vector<uint32_t> serial = merge(*bpe, s, Algo::kLinear);
    if (trial < 16) CHECK(serial == merge(*bpe, s, Algo::kQueue));
    for (unsigned threads = 2; threads <= 8; ++threads)
      CHECK(merge_parts(*bpe, s, threads, 1 + rng() % (trial % 2 ? 16 : 1000)) == serial);
  }
  // Pieces large enough for aligned part offsets (parts of 4 * 20160 bytes and more), through encode_ordinary.
  for (int kind = 0; kind < 8; ++kind) {
    std::string s = text_of(kind, 400000 + rng() % 1000);
    std::vector<uint32_t> serial = merge(*bpe, s, Algo::kLinear);
    for (unsigned threads : {2u, 3u, 5u}) {
      PieceThreads pt;
      pt.threads = threads;
      pt.min_part = 50000;
      std::vector<uint32_t> out;
      if (kind == 7) {  // random bytes are many pieces to encode_ordinary
        CHECK(merge_parts(*bpe, s, threads, pt.min_part) == serial);
        continue;
      }
      bpe->encode_ordinary(s, out, pt);
      CHECK(out == serial);
    }
  }
  // Runs cut at offsets off their period (parts too small for aligned offsets): the parts' encodings never agree,
  // and the serial merge takes over.
  for (size_t n : {150007, 150010}) {
    std::string run(n, 'a'), emoji;
    while (emoji.size() < n) emoji += "\xf0\x9f\x98\x80";
    for (const std::string& s : {run, emoji}) CHECK(merge_parts(*bpe, s, 3, 1000) == merge(*bpe, s, Algo::kLinear));
  }
  CHECK(PieceThreads::hardware().threads >= 1 && PieceThreads::hardware().threads <= 8);
  // A text of many pieces in groups of pieces on threads (CoreBPE::encode_ordinary, encode): the serial ids, with
  // groups down to a few pieces, and a giant piece in the text (cut into parts when it dominates the text).
  auto fresh = CoreBPE::from_merge_text(vocab, merges, {}, "gpt2", "encoder.json");
  for (int trial = 0; trial < 24; ++trial) {
    std::string text;
    while (text.size() < 20000 + static_cast<size_t>(trial) * 500) {
      text += text_of(rng() % 8, 1 + rng() % (trial % 4 == 3 ? 3000 : 40));
      text += trial % 3 ? " " : ", ";
    }
    std::vector<uint32_t> serial;
    fresh->encode_ordinary(text, serial);
    for (unsigned threads : {2u, 3u, 7u}) {
      PieceThreads pt;
      pt.threads = threads;
      pt.min_part = 1 + rng() % 4000;
      std::vector<uint32_t> out{42};  // appends after what the vector holds
      bpe->encode_ordinary(text, out, pt);
      CHECK(out.size() == serial.size() + 1 && out[0] == 42);
      CHECK(std::equal(serial.begin(), serial.end(), out.begin() + 1));
      out.clear();
      CHECK(bpe->encode(text, {}, out, pt) == -1 && out == serial);
    }
  }
  PieceThreads four;
  four.threads = 4;
  four.min_part = 100;
  CHECK(four.text_parts(1000, 10, 1000) == 4);
  CHECK(four.text_parts(1000, 300, 1000) == 1);  // a piece longer than a group
  CHECK(four.text_parts(1000, 10, 255) == 1);    // under 64 pieces per group
  CHECK(four.text_parts(150, 10, 1000) == 1);    // under 2 parts
}

int main() {
  test_prefix_trie();
  test_trained_vocabularies();
  test_random_vocabularies();
  test_refused_vocabulary_still_exact();
  test_gpt2_vocabulary();
  test_parallel_trained();
  test_parallel_gpt2();
  if (g_failures) std::fprintf(stderr, "%d check(s) failed\n", g_failures);
  else std::printf("test_backtrack: all checks passed\n");
  return g_failures ? 1 : 0;
}
