// The priority queue of long-piece merging: pops (rank, position) pairs, lowest rank first and the
// leftmost position among equal ranks, like a binary heap of (rank << 32 | position), but in O(1)
// amortised per operation for the way BPE uses it.
//
// Why that is possible: BPE pushes the pairs of a piece left to right, and each merge pushes the two
// new pairs around it, which again mostly move left to right. So the positions pushed into one rank
// arrive almost always in increasing order: each rank keeps an append-only sorted run (O(1) push and
// pop) and a small heap for the rare out-of-order position. The lowest non-empty rank is found in a
// two-level bitmap over all ranks (a 64-ary tree of depth 2: a few word scans). A binary heap of a
// 1M-byte piece costs ~20 cache-missing levels per operation; this costs a few sequential accesses.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "hash.h"

namespace fastllm {

class RankQueue {
 public:
  // num_ranks: ranks are < num_ranks. expected_ranks: about how many distinct ranks will be pushed.
  RankQueue(size_t num_ranks, size_t expected_ranks)
      : words_((num_ranks + 63) / 64, 0), summary_((words_.size() + 63) / 64, 0), cur_(num_ranks) {
    size_t cap = table_capacity(expected_ranks);
    keys_.assign(cap, kEmpty);
    index_.resize(cap);
    mask_ = cap - 1;
  }

  void push(uint32_t rank, uint32_t pos) {
    Bucket& b = bucket(rank);
    if (b.empty()) {
      b.run.clear();
      b.head = 0;
      set_bit(rank);
    }
    if (b.head == b.run.size() || pos > b.run.back()) {
      b.run.push_back(pos);
    } else {
      b.heap.push_back(pos);
      std::push_heap(b.heap.begin(), b.heap.end(), std::greater<uint32_t>());
    }
    if (rank < cur_) cur_ = rank;
  }

  // Pops the lowest (rank, position); false when empty.
  bool pop(uint32_t& rank, uint32_t& pos) {
    size_t r = next_set(cur_);
    if (r == kNone) return false;
    cur_ = static_cast<uint32_t>(r);
    Bucket& b = buckets_[index_[slot(cur_)]];
    bool from_run = b.head < b.run.size() && (b.heap.empty() || b.run[b.head] < b.heap.front());
    if (from_run) {
      pos = b.run[b.head++];
    } else {
      pos = b.heap.front();
      std::pop_heap(b.heap.begin(), b.heap.end(), std::greater<uint32_t>());
      b.heap.pop_back();
    }
    rank = cur_;
    if (b.empty()) clear_bit(cur_);
    return true;
  }

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;
  static constexpr size_t kNone = SIZE_MAX;
  struct Bucket {
    std::vector<uint32_t> run;   // sorted; [head, size) not yet popped
    size_t head = 0;
    std::vector<uint32_t> heap;  // min-heap of out-of-order positions
    bool empty() const { return head == run.size() && heap.empty(); }
  };

  size_t slot(uint32_t rank) const {
    size_t i = mix64(rank) & mask_;
    while (keys_[i] != rank && keys_[i] != kEmpty) i = (i + 1) & mask_;
    return i;
  }

  Bucket& bucket(uint32_t rank) {
    size_t i = slot(rank);
    if (keys_[i] == kEmpty) {
      if (2 * (buckets_.size() + 1) > keys_.size()) {
        grow();
        i = slot(rank);
      }
      keys_[i] = rank;
      index_[i] = static_cast<uint32_t>(buckets_.size());
      buckets_.emplace_back();
    }
    return buckets_[index_[i]];
  }

  void grow() {
    std::vector<uint32_t> keys = std::move(keys_), index = std::move(index_);
    keys_.assign(keys.size() * 2, kEmpty);
    index_.assign(keys.size() * 2, 0);
    mask_ = keys_.size() - 1;
    for (size_t k = 0; k < keys.size(); ++k) {
      if (keys[k] == kEmpty) continue;
      size_t i = slot(keys[k]);
      keys_[i] = keys[k];
      index_[i] = index[k];
    }
  }

  void set_bit(uint32_t r) {
    words_[r >> 6] |= uint64_t{1} << (r & 63);
    summary_[r >> 12] |= uint64_t{1} << ((r >> 6) & 63);
  }
  void clear_bit(uint32_t r) {
    words_[r >> 6] &= ~(uint64_t{1} << (r & 63));
    if (words_[r >> 6] == 0) summary_[r >> 12] &= ~(uint64_t{1} << ((r >> 6) & 63));
  }

  // The first set bit at or after `from`.
  size_t next_set(size_t from) const {
    size_t w = from >> 6;
    if (w >= words_.size()) return kNone;
    uint64_t bits = words_[w] & (~uint64_t{0} << (from & 63));
    if (bits) return (w << 6) + static_cast<size_t>(__builtin_ctzll(bits));
    size_t next_word = w + 1, s = next_word >> 6;
    if (s >= summary_.size()) return kNone;
    uint64_t sbits = summary_[s] & (~uint64_t{0} << (next_word & 63));
    while (true) {
      if (sbits) {
        size_t w2 = (s << 6) + static_cast<size_t>(__builtin_ctzll(sbits));
        return (w2 << 6) + static_cast<size_t>(__builtin_ctzll(words_[w2]));
      }
      if (++s >= summary_.size()) return kNone;
      sbits = summary_[s];
    }
  }

  std::vector<uint64_t> words_, summary_;
  uint32_t cur_;  // no set bit below it
  std::vector<uint32_t> keys_, index_;  // rank -> bucket, open addressing
  size_t mask_ = 0;
  std::vector<Bucket> buckets_;
};

}  // namespace fastllm
