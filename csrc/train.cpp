// Byte-level BPE training; see train.h for the algorithm and the tie-breaking rule.
#include "train.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "pretokenize.h"

namespace fastllm {

namespace {

// Hash tables below use open addressing with linear probing over a power-of-two array kept at
// most half full: a lookup is one or two cache lines, where std::unordered_map chases a node
// pointer per probe (that was a third of the training time).
inline size_t table_size_for(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

// Distinct pieces and their counts. The bytes live in fixed-size blocks that never move, so
// the stored pointers stay valid as the table grows; one allocation per block, not per piece.
class PieceTable {
 public:
  void add(std::string_view piece, uint64_t n) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    const uint64_t h = std::hash<std::string_view>{}(piece);
    const size_t mask = slots_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Slot& slot = slots_[i];
      if (slot.data == nullptr) {
        slot = {h, store(piece), piece.size(), n};
        ++size_;
        return;
      }
      if (slot.hash == h && slot.size == piece.size() && std::memcmp(slot.data, piece.data(), piece.size()) == 0) {
        slot.count += n;
        return;
      }
    }
  }

  template <typename Fn>
  void for_each(Fn fn) const {  // fn(std::string_view piece, uint64_t count), in no particular order
    for (const Slot& slot : slots_) {
      if (slot.data != nullptr) fn(std::string_view(slot.data, slot.size), slot.count);
    }
  }

  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash;
    const char* data;  // nullptr: empty slot (pieces are never empty)
    size_t size;
    uint64_t count;
  };
  static constexpr size_t kBlockSize = size_t{1} << 20;

  const char* store(std::string_view s) {
    if (s.size() > block_size_ - block_used_) {
      block_size_ = std::max(kBlockSize, s.size());  // a piece larger than a block gets its own
      blocks_.push_back(std::make_unique<char[]>(block_size_));
      block_used_ = 0;
    }
    char* dst = blocks_.back().get() + block_used_;
    std::memcpy(dst, s.data(), s.size());
    block_used_ += s.size();
    return dst;
  }

  void grow() {
    std::vector<Slot> old(table_size_for(size_ + 1), Slot{0, nullptr, 0, 0});
    old.swap(slots_);
    const size_t mask = slots_.size() - 1;
    for (const Slot& slot : old) {
      if (slot.data == nullptr) continue;
      size_t i = slot.hash & mask;
      while (slots_[i].data != nullptr) i = (i + 1) & mask;
      slots_[i] = slot;
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
  std::vector<std::unique_ptr<char[]>> blocks_;
  size_t block_used_ = 0;
  size_t block_size_ = 0;
};

// (left id, right id), packed in 64 bits, -> pair id.
class PairIndex {
 public:
  // The id stored for `key`, or `id_if_new` (an id not stored yet), stored now, if the key is new.
  uint32_t find_or_insert(uint64_t key, uint32_t id_if_new) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    const size_t mask = slots_.size() - 1;
    for (size_t i = index_of(key);; i = (i + 1) & mask) {
      if (slots_[i].key == key) return slots_[i].id;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, id_if_new};
        ++size_;
        return id_if_new;
      }
    }
  }

 private:
  struct Slot {
    uint64_t key;
    uint32_t id;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // no pair: token ids stay below 2^32 - 1

  // Fibonacci hashing: the multiply moves every key bit into the high bits that pick the slot.
  size_t index_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> shift_); }

  void grow() {
    std::vector<Slot> old(table_size_for(size_ + 1), Slot{kEmpty, 0});
    old.swap(slots_);
    shift_ = 64;
    for (size_t cap = slots_.size(); cap > 1; cap >>= 1) --shift_;
    const size_t mask = slots_.size() - 1;
    for (const Slot& slot : old) {
      if (slot.key == kEmpty) continue;
      size_t i = index_of(slot.key);
      while (slots_[i].key != kEmpty) i = (i + 1) & mask;
      slots_[i] = slot;
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
  int shift_ = 64;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Word counting

struct BpeTrainer::WordTable {
  PieceTable pieces;
  uint64_t total = 0;
};

BpeTrainer::BpeTrainer(std::string_view pattern)
    : pretokenizer_(make_pretokenizer(pattern)), words_(std::make_unique<WordTable>()) {}
BpeTrainer::~BpeTrainer() = default;
BpeTrainer::BpeTrainer(BpeTrainer&&) noexcept = default;
BpeTrainer& BpeTrainer::operator=(BpeTrainer&&) noexcept = default;

void BpeTrainer::add_text(std::string_view text) {
  std::vector<Span> spans;
  pretokenizer_->split(text, spans);
  for (const Span& span : spans) {
    if (span.second > span.first) {  // a regex may match the empty string; it holds no byte
      words_->pieces.add(text.substr(span.first, span.second - span.first), 1);
      ++words_->total;
    }
  }
}

void BpeTrainer::merge_counts_from(const BpeTrainer& other) {
  other.words_->pieces.for_each([this](std::string_view piece, uint64_t n) { words_->pieces.add(piece, n); });
  words_->total += other.words_->total;
}

size_t BpeTrainer::num_unique_words() const { return words_->pieces.size(); }
uint64_t BpeTrainer::num_words() const { return words_->total; }

// ---------------------------------------------------------------------------------------------
// Merging

namespace {

inline uint64_t pair_key(uint32_t left, uint32_t right) { return (uint64_t{left} << 32) | right; }

// Three-way comparison of the byte strings a1 + a2 and b1 + b2 without building them.
int compare_concat(std::string_view a1, std::string_view a2, std::string_view b1, std::string_view b2) {
  std::string_view a = a1, b = b1;
  bool a_in_second = false, b_in_second = false;
  for (;;) {
    if (a.empty() && !a_in_second) {
      a = a2;
      a_in_second = true;
      continue;
    }
    if (b.empty() && !b_in_second) {
      b = b2;
      b_in_second = true;
      continue;
    }
    if (a.empty() || b.empty()) return (a.empty() ? 0 : 1) - (b.empty() ? 0 : 1);
    const size_t n = std::min(a.size(), b.size());
    const int c = std::memcmp(a.data(), b.data(), n);  // unsigned byte order
    if (c != 0) return c;
    a.remove_prefix(n);
    b.remove_prefix(n);
  }
}

class MergeEngine {
 public:
  // `words`: the distinct pieces of two bytes or more and their counts, in any order.
  MergeEngine(std::vector<std::pair<std::string_view, uint64_t>> words, size_t num_merges) {
    result_.tokens.reserve(256 + std::min<size_t>(num_merges, 1u << 20));
    for (int b = 0; b < 256; ++b) result_.tokens.emplace_back(1, static_cast<char>(b));
    load_words(std::move(words));
    count_pairs();
  }

  BpeTrainResult run(size_t num_merges, uint64_t min_frequency,
                     const std::function<bool(size_t, size_t)>& progress) {
    // Ids are uint32 and the next id must stay representable.
    num_merges = std::min<size_t>(num_merges, std::numeric_limits<uint32_t>::max() - 256);
    if (progress && !progress(0, num_merges)) throw BpeTrainCancelled();
    for (size_t m = 0; m < num_merges; ++m) {
      const uint32_t best = pop_best();
      if (best == kNone || static_cast<uint64_t>(pair_count_[best]) < min_frequency) break;
      apply_merge(best, static_cast<uint32_t>(256 + m));
      if (progress && !progress(m + 1, num_merges)) throw BpeTrainCancelled();
    }
    return std::move(result_);
  }

 private:
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

  struct QueueEntry {
    int64_t count;
    uint32_t pair;
  };

  void load_words(std::vector<std::pair<std::string_view, uint64_t>> words) {
    // Sorting by bytes makes the word ids (and so all later work) independent of hash order.
    std::sort(words.begin(), words.end());
    if (words.size() >= kNone) throw std::length_error("BpeTrainer: more than 2^32 - 1 distinct pieces");
    size_t total = 0;
    for (const auto& wc : words) {
      if (wc.first.size() >= kNone) throw std::length_error("BpeTrainer: a piece of 4 GiB or more");
      total += wc.first.size();
    }
    symbols_.reserve(total);
    for (const auto& [bytes, n] : words) {
      word_start_.push_back(symbols_.size());
      word_len_.push_back(static_cast<uint32_t>(bytes.size()));
      word_count_.push_back(static_cast<int64_t>(std::min<uint64_t>(n, std::numeric_limits<int64_t>::max())));
      for (char c : bytes) symbols_.push_back(static_cast<unsigned char>(c));
    }
  }

  void count_pairs() {
    for (uint32_t w = 0; w < word_len_.size(); ++w) {
      const uint32_t* s = &symbols_[word_start_[w]];
      for (uint32_t i = 0; i + 1 < word_len_[w]; ++i) {
        const uint32_t p = pair_id(s[i], s[i + 1]);
        pair_count_[p] += word_count_[w];
        add_word(p, w);
      }
    }
    for (uint32_t p = 0; p < pair_count_.size(); ++p) queue_.push_back({pair_count_[p], p});  // all > 0
    std::make_heap(queue_.begin(), queue_.end(), Worse{this});
  }

  // Index of the pair (left, right), created with count 0 if new.
  uint32_t pair_id(uint32_t left, uint32_t right) {
    if (pair_left_.size() >= kNone) throw std::length_error("BpeTrainer: more than 2^32 - 1 distinct pairs");
    const uint32_t fresh = static_cast<uint32_t>(pair_left_.size());
    const uint32_t id = pair_index_.find_or_insert(pair_key(left, right), fresh);
    if (id == fresh) {
      pair_left_.push_back(left);
      pair_right_.push_back(right);
      pair_count_.push_back(0);
      pair_words_.emplace_back();
      pair_stamp_.push_back(0);
      pair_count_before_.push_back(0);
    }
    return id;
  }

  void add_word(uint32_t p, uint32_t w) {
    // Words are visited in order while counting, so this keeps the list free of repeats
    // then; later merges may still add a word twice or leave stale entries, which
    // apply_merge tolerates.
    std::vector<uint32_t>& list = pair_words_[p];
    if (list.empty() || list.back() != w) list.push_back(w);
  }

  // Strict weak order "a is worse than b" for the max-heap: see the tie-breaking in train.h.
  bool worse(const QueueEntry& a, const QueueEntry& b) const {
    if (a.count != b.count) return a.count < b.count;
    const auto& t = result_.tokens;
    const int c = compare_concat(t[pair_left_[a.pair]], t[pair_right_[a.pair]], t[pair_left_[b.pair]],
                                 t[pair_right_[b.pair]]);
    if (c != 0) return c > 0;
    return pair_key(pair_left_[a.pair], pair_right_[a.pair]) > pair_key(pair_left_[b.pair], pair_right_[b.pair]);
  }
  struct Worse {
    const MergeEngine* engine;
    bool operator()(const QueueEntry& a, const QueueEntry& b) const { return engine->worse(a, b); }
  };

  void push(int64_t count, uint32_t pair) {
    queue_.push_back({count, pair});
    std::push_heap(queue_.begin(), queue_.end(), Worse{this});
  }

  // Lazy invalidation. Invariant: every pair with count c > 0 has a queue entry with
  // count >= c (a count that grows is pushed again; one that shrinks keeps its old entry).
  // So an entry whose count equals the pair's current count, popped first, is the best.
  uint32_t pop_best() {
    while (!queue_.empty()) {
      std::pop_heap(queue_.begin(), queue_.end(), Worse{this});
      const QueueEntry e = queue_.back();
      queue_.pop_back();
      const int64_t now = pair_count_[e.pair];
      if (e.count == now) return e.pair;
      if (now > 0 && now < e.count) push(now, e.pair);  // shrunk: re-queue at its true count
      // else: merged away (0), or grown, in which case a newer entry holds the larger count.
    }
    return kNone;
  }

  void apply_merge(uint32_t best, uint32_t new_id) {
    const uint32_t left = pair_left_[best], right = pair_right_[best];
    result_.merges.emplace_back(left, right);
    result_.tokens.push_back(result_.tokens[left] + result_.tokens[right]);

    std::vector<uint32_t> words = std::move(pair_words_[best]);
    pair_words_[best] = {};
    pair_count_[best] = 0;  // no occurrence survives a left-to-right merge pass
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());

    ++stamp_;
    touched_.clear();
    for (uint32_t w : words) merge_word(w, left, right, new_id);

    // Pairs that grew need an entry at their new count (see pop_best).
    for (uint32_t p : touched_) {
      if (pair_count_[p] > pair_count_before_[p]) push(pair_count_[p], p);
    }
  }

  // Rewrites every occurrence of (left, right) in word w, left to right, and records how
  // the pairs around each occurrence change. With symbols p a b q and merge (a, b) -> X:
  // (p, a) and (b, q) lose one, (p, X) and (X, q) gain one. When two occurrences touch
  // (a b a b) the second sees X as its left neighbour, which cancels the first's (X, a).
  void merge_word(uint32_t w, uint32_t left, uint32_t right, uint32_t new_id) {
    uint32_t* s = &symbols_[word_start_[w]];
    const uint32_t n = word_len_[w];
    changes_.clear();
    uint32_t j = 0;  // write index; j <= i, so s[i..] is still the old word
    for (uint32_t i = 0; i < n;) {
      if (i + 1 < n && s[i] == left && s[i + 1] == right) {
        if (j > 0) {
          changes_.push_back({pair_key(s[j - 1], left), -1});
          changes_.push_back({pair_key(s[j - 1], new_id), +1});
        }
        if (i + 2 < n) {
          changes_.push_back({pair_key(right, s[i + 2]), -1});
          changes_.push_back({pair_key(new_id, s[i + 2]), +1});
        }
        s[j++] = new_id;
        i += 2;
      } else {
        s[j++] = s[i++];
      }
    }
    word_len_[w] = j;
    if (changes_.empty()) return;  // stale entry, or a two-symbol word that became one token

    // Net the changes per pair so pairs that cancel out are left alone.
    std::sort(changes_.begin(), changes_.end());
    const uint64_t merged_key = pair_key(left, right);
    for (size_t k = 0; k < changes_.size();) {
      const uint64_t key = changes_[k].first;
      int64_t delta = 0;
      for (; k < changes_.size() && changes_[k].first == key; ++k) delta += changes_[k].second;
      // The merged pair itself (from overlaps like a a a) is already zeroed.
      if (delta == 0 || key == merged_key) continue;
      const uint32_t p = pair_id(static_cast<uint32_t>(key >> 32), static_cast<uint32_t>(key));
      if (pair_stamp_[p] != stamp_) {
        pair_stamp_[p] = stamp_;
        pair_count_before_[p] = pair_count_[p];
        touched_.push_back(p);
      }
      pair_count_[p] += delta * word_count_[w];
      if (delta > 0) add_word(p, w);
    }
  }

  BpeTrainResult result_;
  // Words: the symbols of word w are symbols_[word_start_[w], + word_len_[w]); merges only
  // shrink a word, so it is rewritten in place.
  std::vector<uint32_t> symbols_;
  std::vector<size_t> word_start_;
  std::vector<uint32_t> word_len_;
  std::vector<int64_t> word_count_;
  // Pairs, indexed by pair id (structure of arrays).
  PairIndex pair_index_;
  std::vector<uint32_t> pair_left_, pair_right_;
  std::vector<int64_t> pair_count_;
  std::vector<std::vector<uint32_t>> pair_words_;  // words that contain (or once contained) the pair
  std::vector<uint32_t> pair_stamp_;               // last merge that touched the pair
  std::vector<int64_t> pair_count_before_;         // count before that merge
  uint32_t stamp_ = 0;
  std::vector<uint32_t> touched_;
  std::vector<std::pair<uint64_t, int64_t>> changes_;
  std::vector<QueueEntry> queue_;
};

}  // namespace

BpeTrainResult BpeTrainer::train(size_t num_merges, uint64_t min_frequency,
                                 const std::function<bool(size_t, size_t)>& progress) const {
  // Single-byte pieces hold no pair and never change: they are left out.
  std::vector<std::pair<std::string_view, uint64_t>> words;
  words.reserve(words_->pieces.size());
  words_->pieces.for_each([&words](std::string_view piece, uint64_t n) {
    if (piece.size() >= 2) words.emplace_back(piece, n);
  });
  MergeEngine engine(std::move(words), num_merges);
  return engine.run(num_merges, min_frequency, progress);
}

}  // namespace fastllm
