// Unit tests for csrc/train.cpp (BpeTrainer). Plain main(); run by ctest, also under ASan+UBSan.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "pretokenize.h"
#include "train.h"

namespace {

using fastllm::BpeTrainer;
using fastllm::BpeTrainResult;
using Merges = std::vector<std::pair<uint32_t, uint32_t>>;

const std::function<bool(size_t, size_t)> kNoProgress;

BpeTrainResult train_on(const std::vector<std::string>& texts, size_t num_merges, uint64_t min_frequency) {
  BpeTrainer trainer("gpt2");
  for (const auto& t : texts) trainer.add_text(t);
  return trainer.train(num_merges, min_frequency, kNoProgress);
}

// Naive reference: recount every pair over every word for each merge, same tie-breaking.
Merges naive_train(const std::vector<std::string>& texts, size_t num_merges, uint64_t min_frequency) {
  auto pre = fastllm::make_pretokenizer("gpt2");
  std::map<std::string, uint64_t> counts;
  for (const auto& t : texts) {
    std::vector<fastllm::Span> spans;
    pre->split(t, spans);
    for (auto [b, e] : spans) ++counts[t.substr(b, e - b)];
  }
  std::vector<std::pair<std::vector<uint32_t>, uint64_t>> words;
  for (const auto& [w, n] : counts) {
    std::vector<uint32_t> ids;
    for (unsigned char c : w) ids.push_back(c);
    words.push_back({ids, n});
  }
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  Merges merges;
  while (merges.size() < num_merges) {
    std::map<std::pair<uint32_t, uint32_t>, uint64_t> pairs;
    for (const auto& [ids, n] : words) {
      for (size_t i = 0; i + 1 < ids.size(); ++i) pairs[{ids[i], ids[i + 1]}] += n;
    }
    bool found = false;
    std::pair<uint32_t, uint32_t> best;
    uint64_t best_count = 0;
    for (const auto& [p, c] : pairs) {  // map order = ascending (left, right): ties keep the first
      const std::string s = tokens[p.first] + tokens[p.second];
      const std::string bs = found ? tokens[best.first] + tokens[best.second] : std::string();
      if (!found || c > best_count || (c == best_count && s < bs)) {
        found = true;
        best = p;
        best_count = c;
      }
    }
    if (!found || best_count < min_frequency) break;
    const uint32_t id = static_cast<uint32_t>(tokens.size());
    tokens.push_back(tokens[best.first] + tokens[best.second]);
    merges.push_back(best);
    for (auto& [ids, n] : words) {
      std::vector<uint32_t> out;
      for (size_t i = 0; i < ids.size();) {
        if (i + 1 < ids.size() && ids[i] == best.first && ids[i + 1] == best.second) {
          out.push_back(id);
          i += 2;
        } else {
          out.push_back(ids[i++]);
        }
      }
      ids = out;
    }
  }
  return merges;
}

void test_hand_computed() {
  // One piece "aaabdaaabac": (a,a) occurs 4 times (overlapping positions count), then
  // (aa,a) and (aaa,b) tie with (a,b) at 2 and win on bytes ("aaa" < "ab", "aaab" < "ab"),
  // then all pairs have count 1 and "aaaba" is the smallest merged string.
  const BpeTrainResult r = train_on({"aaabdaaabac"}, 10, 1);
  const Merges expected = {{'a', 'a'}, {256, 'a'}, {257, 'b'}, {258, 'a'}};
  CHECK(r.merges.size() >= expected.size());
  CHECK(Merges(r.merges.begin(), r.merges.begin() + 4) == expected);
  CHECK(r.tokens.size() == 256 + r.merges.size());
  CHECK(r.tokens[97] == "a");
  CHECK(r.tokens[0] == std::string(1, '\0'));
  CHECK(r.tokens[255] == std::string(1, '\xff'));
  CHECK(r.tokens[259] == "aaaba");

  // Word counts weigh pairs: " low" x5, " lower" x2, " newest" x6, " widest" x3 (classic example).
  std::string text;
  for (int i = 0; i < 5; ++i) text += " low";
  for (int i = 0; i < 2; ++i) text += " lower";
  for (int i = 0; i < 6; ++i) text += " newest";
  for (int i = 0; i < 3; ++i) text += " widest";
  const BpeTrainResult r2 = train_on({text}, 3, 1);
  // Counts: (e,s) 9, (s,t) 9, (w,e) 8, (' ',l) (l,o) (o,w) 7, ... "es" < "st" so (e,s) first,
  // then (es,t) 9; (w,e) lost " newest" to "es" and fell to 2, so the three pairs at 7 tie and
  // " l" < "lo" < "ow" picks (' ', l).
  const Merges expected2 = {{'e', 's'}, {256, 't'}, {' ', 'l'}};
  CHECK(r2.merges == expected2);
  CHECK(r2.tokens[257] == "est");
}

void test_overlap() {
  // "aaaa": (a,a) counted 3 times; merging gives [aa, aa]; then (aa, aa) once.
  const BpeTrainResult r = train_on({"aaaa"}, 5, 1);
  const Merges expected = {{'a', 'a'}, {256, 256}};
  CHECK(r.merges == expected);
  // "aaa" x2 and "aa": (a,a) 5 -> [aa a] x2 + [aa]: (aa, a) 2.
  const BpeTrainResult r2 = train_on({"aaa", "aaa", "aa"}, 5, 1);
  const Merges expected2 = {{'a', 'a'}, {256, 'a'}};
  CHECK(r2.merges == expected2);
}

void test_min_frequency() {
  const BpeTrainResult r = train_on({"aaabdaaabac"}, 10, 2);
  const Merges expected = {{'a', 'a'}, {256, 'a'}, {257, 'b'}};
  CHECK(r.merges == expected);
  CHECK(train_on({"abcd"}, 10, 2).merges.empty());
  CHECK(train_on({}, 10, 0).merges.empty());
  CHECK(train_on({"a", "b"}, 10, 0).merges.empty());  // single-byte pieces hold no pair
  CHECK(train_on({"abab"}, 0, 0).merges.empty());
}

void test_tie_breaking_and_order() {
  // Each text is one piece; all pairs tie at count 1; merged bytes decide.
  const BpeTrainResult a = train_on({"zy", "cd", "ab"}, 10, 1);
  const Merges expected = {{'a', 'b'}, {'c', 'd'}, {'z', 'y'}};
  CHECK(a.merges == expected);
  // A proper prefix sorts first: "aa" (from "aab") < "ab".
  const BpeTrainResult b = train_on({"aab"}, 1, 1);
  CHECK(b.merges == Merges({{'a', 'a'}}));

  std::vector<std::string> texts = {"the cat sat on the mat", "a bat, a hat; that's it", "tattoo attack",
                                    "1234 12 123", "  spaced   out  \n\n lines\n", "the the the"};
  const Merges first = train_on(texts, 60, 1).merges;
  std::mt19937 rng(7);
  for (int k = 0; k < 5; ++k) {
    std::shuffle(texts.begin(), texts.end(), rng);
    CHECK(train_on(texts, 60, 1).merges == first);
  }
}

void test_against_naive() {
  std::mt19937 rng(1234);
  const std::string alphabet = "aab  bcab\n.x";
  for (int round = 0; round < 60; ++round) {
    std::vector<std::string> texts;
    const int num_texts = 1 + static_cast<int>(rng() % 6);
    for (int t = 0; t < num_texts; ++t) {
      std::string s;
      const size_t len = rng() % 120;
      for (size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
      texts.push_back(s);
    }
    const uint64_t min_freq = rng() % 3;
    if (round % 4 == 0) {  // long runs: overlapping pairs and words far longer than usual
      texts.push_back(std::string(1 + rng() % 300, 'a'));
      std::string ab;
      for (size_t i = rng() % 200; i > 0; --i) ab += (rng() % 8 == 0) ? "\xc3\xa9" : "ab";  // with some "é"
      texts.push_back(ab);
    }
    const BpeTrainResult fast = train_on(texts, 80, min_freq);
    CHECK(fast.merges == naive_train(texts, 80, min_freq));
    std::vector<std::string> sorted = fast.tokens;  // no two tokens spell the same bytes
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  }
}

void test_merge_counts_and_retrain() {
  const std::vector<std::string> texts = {"hello world", "hello there", "world peace", "hello hello"};
  BpeTrainer whole("gpt2");
  for (const auto& t : texts) whole.add_text(t);
  BpeTrainer part1("gpt2"), part2("gpt2");
  part1.add_text(texts[0]);
  part1.add_text(texts[1]);
  part2.add_text(texts[2]);
  part2.add_text(texts[3]);
  part1.merge_counts_from(part2);
  CHECK(part1.num_words() == whole.num_words());
  CHECK(part1.num_unique_words() == whole.num_unique_words());
  const BpeTrainResult a = whole.train(20, 1, kNoProgress);
  CHECK(part1.train(20, 1, kNoProgress).merges == a.merges);
  CHECK(whole.train(20, 1, kNoProgress).merges == a.merges);  // train() leaves the counts intact
  CHECK(whole.train(5, 1, kNoProgress).merges == Merges(a.merges.begin(), a.merges.begin() + 5));
}

void test_progress_and_cancel() {
  BpeTrainer trainer("gpt2");
  trainer.add_text("the quick brown fox jumps over the lazy dog, the end");
  std::vector<size_t> seen;
  const BpeTrainResult r = trainer.train(5, 1, [&](size_t done, size_t total) {
    CHECK(total == 5);
    seen.push_back(done);
    return true;
  });
  CHECK(r.merges.size() == 5);
  CHECK(seen == std::vector<size_t>({0, 1, 2, 3, 4, 5}));

  bool threw = false;
  size_t calls = 0;
  try {
    trainer.train(20, 1, [&](size_t done, size_t) {
      ++calls;
      return done < 2;
    });
  } catch (const fastllm::BpeTrainCancelled&) {
    threw = true;
  }
  CHECK(threw);
  CHECK(calls == 3);  // 0, 1, 2 -> cancelled
}

}  // namespace

int main() {
  test_hand_computed();
  test_overlap();
  test_min_frequency();
  test_tie_breaking_and_order();
  test_against_naive();
  test_merge_counts_and_retrain();
  test_progress_and_cancel();
  if (g_failures != 0) {
    std::fprintf(stderr, "test_train: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_train: all checks passed\n");
  return 0;
}
