// Byte-level BPE training.
//
// Training runs in two phases:
//   1. add_text(): pre-tokenize each text and count its pieces ("words"). Only the
//      table of unique pieces and their counts is kept, so a corpus far larger than
//      memory can be streamed through in chunks.
//   2. train(): the standard incremental algorithm (as in HF tokenizers and
//      sentencepiece): every unique word is a sequence of token ids, starting from its
//      bytes; pair counts and an index pair -> words that contain it are built once;
//      a max-priority queue with lazy invalidation yields the best pair; a merge
//      rewrites only the words listed for that pair and updates the counts of the
//      pairs around each rewritten occurrence.
//
// Pair counts count every adjacent position, so the word "aaa" holds the pair (a, a)
// twice even though merging it rewrites the word to "Xa" (the usual convention of
// HF tokenizers, sentencepiece and tiktoken's educational trainer).
//
// Tie-breaking is a total order on pairs, so the result depends only on the multiset
// of pieces added, never on the order the texts were added in or on hash layout:
//   1. higher count first;
//   2. then the lexicographically smallest merged byte string tokens[l] + tokens[r]
//      (bytes compared as unsigned, a proper prefix sorts first);
//   3. then the smallest (left id, right id). This only makes the order total: two pairs
//      alive at once never spell the same bytes (see BpeTrainResult::tokens).
// Merging stops after num_merges merges, when no pair is left, or when the best count
// is below min_frequency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fastllm {

class Pretokenizer;

struct BpeTrainResult {
  // id -> bytes. Ids 0..255 are the single bytes 0..255 in byte order, then one token per
  // merge in merge order. The byte strings are all distinct: inside a word, the symbols that
  // end up as one token were merged exactly as the token's bytes alone would be (a merge
  // crossing its edge would have made a token that crosses it), so once bytes S are a token,
  // no later pair spelling S can be adjacent anywhere.
  std::vector<std::string> tokens;
  // (left id, right id) in priority order; merge i creates token 256 + i.
  std::vector<std::pair<uint32_t, uint32_t>> merges;
};

// Thrown by BpeTrainer::train when the progress callback returns false.
class BpeTrainCancelled : public std::runtime_error {
 public:
  BpeTrainCancelled() : std::runtime_error("BPE training cancelled by the progress callback") {}
};

class BpeTrainer {
 public:
  // `pattern` is a pre-tokenization pattern as accepted by make_pretokenizer ("gpt2",
  // "cl100k", "o200k" or a regex). Throws std::invalid_argument for a bad pattern.
  explicit BpeTrainer(std::string_view pattern);
  ~BpeTrainer();
  BpeTrainer(BpeTrainer&&) noexcept;
  BpeTrainer& operator=(BpeTrainer&&) noexcept;

  // Pre-tokenizes `text` and adds its pieces to the word counts. Texts are independent:
  // no piece spans two texts.
  void add_text(std::string_view text);
  // Adds the word counts of `other` (built with any pattern) to this trainer: lets
  // several threads count disjoint parts of a corpus in their own trainers.
  void merge_counts_from(const BpeTrainer& other);

  // Number of distinct pieces and total pieces counted so far.
  size_t num_unique_words() const;
  uint64_t num_words() const;

  // Learns up to `num_merges` merges. `progress(done, total)` is called at the start, after
  // every merge and at the end (done == number of merges learned); returning false cancels
  // the run by throwing BpeTrainCancelled. The word counts are left untouched, so train()
  // can be called again (e.g. with another size).
  BpeTrainResult train(size_t num_merges, uint64_t min_frequency,
                       const std::function<bool(size_t done, size_t total)>& progress) const;

 private:
  struct WordTable;
  std::unique_ptr<Pretokenizer> pretokenizer_;
  std::unique_ptr<WordTable> words_;
};

}  // namespace fastllm
