// The tables of the linear-time BPE encoder for long pieces (bpe_backtrack.cpp), after the backtracking
// encoder of GitHub's `bpe` crate ("So many tokens, so little time", 2024).
//
// Why it is exact. BPE merges the lowest-priority pair first (leftmost among equals), so any token t
// that BPE ever builds inside a text was built exactly as BPE builds t's bytes alone: the merges inside
// a part never depend on its surroundings. So every reachable token has one canonical merge tree, whose
// root is its split (left, right). Two tokens are a compatible pair when BPE of their concatenated bytes
// returns exactly the two; the BPE encoding of a text is then the one sequence of reachable tokens in
// which every neighbouring pair is compatible. The encoder finds it greedily (longest token first,
// shorter ones on a conflict, backing up one token when none fits) and remembers dead positions in a
// bitmap, so each position is given up at most once: linear time for a bounded token length. The same
// uniqueness lets one giant piece be cut into parts merged on threads and joined where their encodings meet
// (CoreBPE::merge_backtrack_parallel).
//
// Compatibility is decided by unwinding the two merge trees from their roots, latest merge first, and
// checking that the pair straddling the boundary at each step would not have merged before the merge
// that separated it: see valid_pair. That needs priorities that grow towards the root of each tree
// (every merge's inputs were built by earlier merges), which holds for any trained vocabulary; a
// vocabulary where it fails is detected when the tables are built and keeps the queue-based merge.
#pragma once

#include <cstdint>
#include <vector>

#include "hash.h"
#include "prefix_trie.h"

namespace fastllm {

struct BacktrackTables {
  static constexpr uint32_t kNone = PrefixTrie::kNone;
  static constexpr uint32_t kByte = 0x80000000u;  // key of a single-byte token: kByte | the byte

  // The encoder works on records, one per reachable token, so that a compatibility test reads two
  // contiguous runs instead of chasing split links across tables larger than the L2 cache:
  //   header:       {id, shorter, len, number of left-spine entries}
  //   left spine:   the token, its left part, that part's left part, ... down to a single byte
  //   right spine:  the same through right parts
  // A spine entry is {key, prio, filter, bit}: key = the token id (kByte | byte for single bytes); prio
  // = 0 for single bytes, else the priority of the token's last merge + 1 (ranks: rank + 1); filter = 16
  // bits over the keys of the tokens the entry's token forms canonical pairs with on the side where the
  // spine meets the other token (most straddling pairs are not canonical, and the filter rejects them
  // without a probe of the cache-missing pair table); bit = filter_bit(key), the key's bit in the
  // other side's filters. A token's handle is the index of its header.
  struct Entry {
    uint32_t key, prio;  // header: id, shorter (a handle, kNone if no reachable proper prefix)
    uint16_t filter, count;  // header: len, number of left-spine entries; spine: filter, bit
  };

  std::vector<Entry> pool;
  std::vector<uint32_t> handle_of;  // by token id; kNone for tokens BPE never builds
  std::vector<uint32_t> byte_pair;  // [x * 256 + y]: prio of the canonical pair of bytes x, y, or kMissing
  PairMap canonical;                // (key, key) -> {prio, token id} for canonical splits of longer tokens
  std::vector<uint64_t> bloom;      // 2^kBloomBits bits, one per hashed canonical pair: an L2-sized pre-check
  PrefixTrie trie;                  // reachable tokens -> handles
  uint32_t max_len = 1;             // bytes of the longest reachable token

  static constexpr uint64_t kMissing = UINT64_MAX;
  static constexpr unsigned kBloomBits = 21;
  static uint64_t bloom_bit(uint32_t kx, uint32_t ky) {
    return ((uint64_t{kx} << 32 | ky) * 0x9E3779B97F4A7C15ull) >> (64 - kBloomBits);
  }
  static uint16_t filter_bit(uint32_t key) { return static_cast<uint16_t>((key * 0x9E3779B1u) >> 28); }

  uint32_t id(uint32_t h) const { return pool[h].key; }
  uint32_t shorter(uint32_t h) const { return pool[h].prio; }
  uint32_t len(uint32_t h) const { return pool[h].filter; }
  const Entry* left_spine(uint32_t h) const { return &pool[h + 1]; }
  const Entry* right_spine(uint32_t h) const { return &pool[h + 1 + pool[h].count]; }

  // The prio of the token whose canonical split is (x, y), or kMissing. kFilters: the filters are
  // complete (false while the tables are built).
  template <bool kFilters>
  uint64_t pair_prio(const Entry& x, const Entry& y) const {
    if ((x.prio | y.prio) == 0) {
      uint32_t p = byte_pair[(x.key & 255) * 256 + (y.key & 255)];
      return p == PairMap::kMissing ? kMissing : p;
    }
    if (kFilters && !((x.filter >> y.count) & (y.filter >> x.count) & 1)) return kMissing;
    uint64_t bit = bloom_bit(x.key, y.key);
    if (!((bloom[bit >> 6] >> (bit & 63)) & 1)) return kMissing;
    uint32_t p = canonical.find(x.key, y.key).rank;
    return p == PairMap::kMissing ? kMissing : p;
  }

  // Whether BPE of bytes(a) + bytes(b) is [a, b] (a, b: handles).
  template <bool kFilters = true>
  bool valid_pair(uint32_t a, uint32_t b) const {
    const Entry* x = right_spine(a);
    const Entry* y = left_spine(b);
    uint64_t limit = kMissing;  // a straddling merge with a lower priority would have happened first
    while (true) {
      if (pair_prio<kFilters>(*x, *y) < limit) return false;
      if (x->prio > y->prio) {
        // x's last merge came later: before it, x's right part met y. That merge sits to the left of
        // the straddling pair, so it wins ties.
        limit = x->prio;
        ++x;
      } else if (y->prio > 0) {
        // y's last merge came later (or the same token on both sides: the right one merges last). The
        // straddling pair sits to its left and wins ties.
        limit = uint64_t{y->prio} + 1;
        ++y;
      } else {
        return true;  // two single bytes
      }
    }
  }
};

// The encoder's per-thread working memory (kept across pieces: no allocation per piece).
struct BacktrackScratch {
  std::vector<uint64_t> dead;  // bit per position

  // After a giant piece: keep the memory of an ordinary one, not megabytes per thread.
  void trim() {
    constexpr size_t kKeep = size_t{1} << 16;
    if (dead.capacity() > kKeep) std::vector<uint64_t>().swap(dead);
  }
};

}  // namespace fastllm
