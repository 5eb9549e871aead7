// Merging the bytes of one piece into tokens: a scan for short pieces, a rank-bucketed queue for long
// ones (see bpe.h for the two merge semantics).
#include <cstring>

#include "bpe.h"
#include "rank_queue.h"

namespace fastllm {

PairMap::Merge CoreBPE::pair(const char* p, size_t readable, size_t a_off, uint32_t a, uint32_t b, size_t end) const {
  if (uses_merges_) return pairs_.find(a, b);
  uint32_t id = ordinary_.find(p + a_off, end - a_off, make_key(p + a_off, end - a_off, readable - a_off));
  return PairMap::Merge{id, id};
}

// Scans for the lowest-ranked pair each step: O(n^2), but n is small and the data stays in L1.
void CoreBPE::merge_small(const char* piece, size_t n, std::vector<uint32_t>& out) const {
  char p[kSmallPiece + 8];  // a padded copy: pair() may load 8 bytes at any offset
  std::memcpy(p, piece, n);
  std::memset(p + n, 0, 8);
  struct Part {
    uint32_t start, id;
    PairMap::Merge next;  // merging with the following part
  };
  Part parts[kSmallPiece + 1];
  size_t m = n;
  for (size_t i = 0; i < n; ++i) {
    auto c = static_cast<unsigned char>(p[i]);
    PairMap::Merge first = i + 1 < n ? byte_pair_[c * 256 + static_cast<unsigned char>(p[i + 1])]
                                     : PairMap::Merge{PairMap::kMissing, 0};
    parts[i] = Part{uint32_t(i), byte_id_[c], first};
  }
  parts[n] = Part{uint32_t(n), 0, {}};
  auto update = [&](size_t i) {
    parts[i].next = i + 1 < m ? pair(p, sizeof p, parts[i].start, parts[i].id, parts[i + 1].id, parts[i + 2].start)
                              : PairMap::Merge{PairMap::kMissing, 0};
  };
  while (m > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < m; ++i)
      if (parts[i].next.rank < parts[best].next.rank) best = i;
    if (parts[best].next.rank == PairMap::kMissing) break;
    parts[best].id = parts[best].next.id;
    std::memmove(&parts[best + 1], &parts[best + 2], (m - best - 1) * sizeof(Part));  // includes the sentinel
    --m;
    update(best);
    if (best > 0) update(best - 1);
  }
  for (size_t i = 0; i < m; ++i) out.push_back(parts[i].id);
}

// Linked list of parts plus a RankQueue (rank_queue.h) with lazy deletion: near-linear for pieces of
// any length (a 10 MB run of one character is a single piece). The queue visits positions in rank
// order, all over the piece, so each part's state sits in one 16-byte record: one cache miss, not four.
void CoreBPE::merge_large(const char* p, size_t n, std::vector<uint32_t>& out) const {
  if (n >= UINT32_MAX) throw BpeError("a single piece of " + std::to_string(n) + " bytes is too long (limit 4 GB)");
  constexpr uint32_t kDead = UINT32_MAX;
  struct Part {
    uint32_t id;    // kDead once merged into the part on its left
    uint32_t next;  // start of the next part (n at the end)
    uint32_t prev;  // start of the previous part
    uint32_t rank;  // of the pair this part starts, kMissing if none
  };
  std::vector<Part> parts(n);
  RankQueue queue(uses_merges_ ? merges_list_.size() : tokens_.size(), 1024);
  for (size_t i = 0; i < n; ++i) {
    PairMap::Merge m = i + 1 < n ? byte_pair_[static_cast<unsigned char>(p[i]) * 256 + static_cast<unsigned char>(p[i + 1])]
                                 : PairMap::Merge{PairMap::kMissing, 0};
    // prev wraps for i = 0; it is never read there.
    parts[i] = Part{byte_id_[static_cast<unsigned char>(p[i])], static_cast<uint32_t>(i + 1), static_cast<uint32_t>(i - 1),
                    m.rank};
    if (m.rank != PairMap::kMissing) queue.push(m.rank, static_cast<uint32_t>(i));
  }
  auto update = [&](uint32_t i) {  // the pair starting at part i
    Part& a = parts[i];
    a.rank = a.next < n ? pair(p, n, i, a.id, parts[a.next].id, parts[a.next].next).rank : PairMap::kMissing;
    if (a.rank != PairMap::kMissing) queue.push(a.rank, i);
  };
  uint32_t r, i;
  while (queue.pop(r, i)) {
    Part& a = parts[i];
    if (a.id == kDead || a.rank != r) continue;  // stale: the part merged or its pair changed
    Part& b = parts[a.next];
    a.id = uses_merges_ ? pairs_.find(a.id, b.id).id : ordinary_.find(p + i, b.next - i);
    b.id = kDead;
    a.next = b.next;
    if (b.next < n) parts[b.next].prev = i;
    update(i);
    if (i > 0) update(a.prev);
  }
  for (uint32_t k = 0; k < n; k = parts[k].next) out.push_back(parts[k].id);
}

bool CoreBPE::whole_token_ok(uint32_t id) const {
  uint8_t state = whole_ok_[id].load(std::memory_order_relaxed);
  if (state == 0) {
    std::vector<uint32_t> parts;
    std::string_view bytes = token_bytes(id);
    if (bytes.size() <= kSmallPiece) merge_small(bytes.data(), bytes.size(), parts);
    else merge_large(bytes.data(), bytes.size(), parts);
    state = parts.size() == 1 && parts[0] == id ? 1 : 2;
    whole_ok_[id].store(state, std::memory_order_relaxed);
  }
  return state == 1;
}

}  // namespace fastllm
