// Linear-time merging of long pieces: the backtracking encoder over BacktrackTables (see
// bpe_backtrack.h for why it gives exactly the ids of rank-ordered BPE).
#include "bpe_backtrack.h"

#include "bpe.h"

namespace fastllm {

CoreBPE::~CoreBPE() = default;  // here, where BacktrackTables is complete

const BacktrackTables* CoreBPE::backtrack_tables() const {
  std::call_once(backtrack_once_, [this] {
    backtrack_ = build_backtrack();
    backtrack_built_.store(true, std::memory_order_release);
  });
  return backtrack_.get();
}

const BacktrackTables* CoreBPE::backtrack_for(size_t n) const {
  if (backtrack_built_.load(std::memory_order_acquire)) return backtrack_.get();
  if (long_piece_bytes_.fetch_add(n, std::memory_order_relaxed) + n < kBacktrackAfter) return nullptr;
  return backtrack_tables();
}

bool CoreBPE::merge_piece(std::string_view piece, MergeAlgo algo, std::vector<uint32_t>& out) const {
  if (piece.empty()) return true;
  switch (algo) {
    case MergeAlgo::kSmall:
      if (piece.size() > kSmallPiece) throw BpeError("merge_piece: kSmall takes at most 96 bytes");
      merge_small(piece.data(), piece.size(), out);
      return true;
    case MergeAlgo::kQueue:
      merge_large(piece.data(), piece.size(), out);
      return true;
    case MergeAlgo::kLinear:
      if (const BacktrackTables* bt = backtrack_tables()) {
        BacktrackScratch scratch;
        merge_backtrack(*bt, piece.data(), piece.size(), scratch, out);
        return true;
      }
      return false;
  }
  return false;
}

// Canonical splits in priority order: a token's split is the pair of lower-priority reachable tokens
// that concatenate to it and form a compatible pair (then BPE of its bytes ends by merging those two;
// the tables so far hold every merge that could interfere, as those have lower priorities). Tokens
// with no such split are unreachable. Takes 20 ms (GPT-2) to 60 ms (cl100k): it runs once long pieces
// call for it (kBacktrackAfter), not at load.
std::unique_ptr<BacktrackTables> CoreBPE::build_backtrack() const {
  using Entry = BacktrackTables::Entry;
  constexpr uint32_t kNone = BacktrackTables::kNone;
  size_t n = tokens_.size();
  if (n >= BacktrackTables::kByte) return nullptr;  // keys need the top bit
  if (n + 2 * arena_.size() >= UINT32_MAX) return nullptr;  // handles index a pool of <= n + 2 * bytes entries
  auto bt = std::make_unique<BacktrackTables>();
  std::vector<std::string_view> keys;
  std::vector<uint32_t> ids, node_of, longest_prefix;
  keys.reserve(num_ordinary_);
  ids.reserve(num_ordinary_);
  for (uint32_t id = 0; id < n; ++id) {
    if (!has_id(id) || tokens_[id].special) continue;
    keys.push_back(token_bytes(id));
    ids.push_back(id);
  }
  bt->trie.build(keys, ids, node_of, longest_prefix);  // values: token ids while building, handles once built

  bt->handle_of.assign(n, kNone);
  bt->byte_pair.assign(256 * 256, PairMap::kMissing);
  bt->canonical.reset(num_ordinary_);
  bt->bloom.assign((size_t{1} << BacktrackTables::kBloomBits) / 64, 0);
  bt->pool.reserve(num_ordinary_ * 8);
  std::vector<uint16_t> after(n, 0), before(n, 0);  // the filters, by token id
  auto key = [&](uint32_t id) {
    return tokens_[id].len == 1 ? BacktrackTables::kByte | static_cast<unsigned char>(arena_[tokens_[id].off]) : id;
  };
  std::vector<uint32_t> prio_of(n, UINT32_MAX);  // UINT32_MAX: not (yet) reachable
  // Header, left spine (t, then its left part's left spine), right spine (t, then its right part's).
  auto add_record = [&](uint32_t t, uint32_t prio, uint32_t left, uint32_t right) {
    auto& pool = bt->pool;
    uint32_t h = static_cast<uint32_t>(pool.size());
    bt->handle_of[t] = h;
    prio_of[t] = prio;
    pool.push_back(Entry{t, kNone, static_cast<uint16_t>(tokens_[t].len), 1});
    pool.push_back(Entry{key(t), prio, 0, 0});
    if (prio > 0) {
      uint32_t src = bt->handle_of[left];
      for (uint32_t k = 0; k < pool[src].count; ++k) pool.push_back(pool[src + 1 + k]);
      pool[h].count = static_cast<uint16_t>(1 + pool[src].count);
    }
    pool.push_back(Entry{key(t), prio, 0, 0});
    if (prio > 0) {
      uint32_t src = bt->handle_of[right];
      for (size_t k = src + 1 + pool[src].count;; ++k) {  // up to and including its single byte
        Entry e = pool[k];
        pool.push_back(e);
        if (e.prio == 0) break;
      }
    }
  };
  auto join = [&](uint32_t a, uint32_t b, uint32_t t, uint32_t prio) {
    uint32_t ka = key(a), kb = key(b);
    if ((ka & kb & BacktrackTables::kByte) != 0) bt->byte_pair[(ka & 255) * 256 + (kb & 255)] = prio;
    else {
      bt->canonical.insert(ka, kb, PairMap::Merge{prio, t});
      uint64_t bit = BacktrackTables::bloom_bit(ka, kb);
      bt->bloom[bit >> 6] |= uint64_t{1} << (bit & 63);
    }
    after[a] |= static_cast<uint16_t>(1u << BacktrackTables::filter_bit(kb));
    before[b] |= static_cast<uint16_t>(1u << BacktrackTables::filter_bit(ka));
    add_record(t, prio, a, b);
  };
  for (int b = 0; b < 256; ++b) add_record(byte_id_[b], 0, 0, 0);

  if (uses_merges_) {
    for (size_t i = 0; i < merges_list_.size(); ++i) {
      auto [a, b] = merges_list_[i];
      uint32_t t = pairs_.find(a, b).id, prio = static_cast<uint32_t>(i + 1);
      if (bt->handle_of[t] == kNone && prio_of[a] < prio && prio_of[b] < prio &&
          bt->valid_pair<false>(bt->handle_of[a], bt->handle_of[b]))
        join(a, b, t, prio);
    }
  } else {
    for (size_t k = 0; k < keys.size(); ++k) {
      std::string_view s = keys[k];
      uint32_t t = ids[k], prio = t + 1;
      // The tokens that start t, longest first (usually the split).
      for (uint32_t j = longest_prefix[k]; j != kNone; j = longest_prefix[j]) {
        uint32_t a = ids[j];
        if (prio_of[a] >= prio) continue;
        uint32_t b = ordinary_.find(s.data() + keys[j].size(), s.size() - keys[j].size());
        if (b != BytesMap::kMissing && prio_of[b] < prio && bt->valid_pair<false>(bt->handle_of[a], bt->handle_of[b])) {
          join(a, b, t, prio);
          break;
        }
      }
    }
  }
  // A token missed above that BPE does build on its own bytes has a merge tree whose priorities do
  // not grow towards the root: the compatibility test does not hold for this vocabulary.
  std::vector<uint32_t> parts;
  for (size_t k = 0; k < keys.size(); ++k) {
    if (bt->handle_of[ids[k]] != kNone) continue;
    parts.clear();
    if (keys[k].size() <= kSmallPiece) merge_small(keys[k].data(), keys[k].size(), parts);
    else merge_large(keys[k].data(), keys[k].size(), parts);
    if (parts.size() == 1) return nullptr;
  }
  // Filters, trie values and shorter prefixes, now that every token is known.
  auto id_of = [&](uint32_t k) { return k & BacktrackTables::kByte ? byte_id_[k & 255] : k; };
  for (uint32_t h = 0; h < bt->pool.size();) {
    Entry* e = &bt->pool[h + 1];
    for (uint32_t j = 0; j < bt->pool[h].count; ++j, ++e) {
      e->filter = before[id_of(e->key)];
      e->count = BacktrackTables::filter_bit(e->key);
    }
    for (bool more = true; more; ++e) {
      e->filter = after[id_of(e->key)];
      e->count = BacktrackTables::filter_bit(e->key);
      more = e->prio != 0;
    }
    h = static_cast<uint32_t>(e - bt->pool.data());
  }
  for (size_t k = 0; k < keys.size(); ++k) bt->trie.set_value(node_of[k], bt->handle_of[ids[k]]);
  for (size_t k = 0; k < keys.size(); ++k) {
    uint32_t h = bt->handle_of[ids[k]], j = longest_prefix[k];
    if (h == kNone) continue;
    while (j != kNone && bt->handle_of[ids[j]] == kNone) j = longest_prefix[j];
    bt->pool[h].prio = j == kNone ? kNone : bt->handle_of[ids[j]];
  }
  bt->pool.shrink_to_fit();
  return bt;
}

// Greedy longest match with backtracking over token handles, kept in `out` past `first` as a stack
// (and made ids at the end). `dead` marks positions that no valid encoding of the piece reaches with a
// token boundary (the encoding of a prefix is unique, so a position that failed once fails always).
void CoreBPE::merge_backtrack(const BacktrackTables& bt, const char* p, size_t n, BacktrackScratch& scratch,
                              std::vector<uint32_t>& out) const {
  constexpr uint32_t kNone = BacktrackTables::kNone;
  const size_t first = out.size();
  // A giant piece makes about n / 2 tokens: grow `out` once, not by doubling (copies of megabytes).
  if (n > (size_t{1} << 16) && out.capacity() - first < n / 2) out.reserve(first + n / 2);
  std::vector<uint64_t>& dead = scratch.dead;
  dead.assign(n / 64 + 1, 0);
  auto is_dead = [&](size_t i) { return (dead[i >> 6] >> (i & 63)) & 1; };
  auto prefetch = [&](uint32_t h) { __builtin_prefetch(&bt.pool[h]); };
  size_t pos = 0;
  uint32_t next = bt.trie.longest(p, n, prefetch);
  while (pos < n) {
    uint32_t t = next, last = out.size() > first ? out.back() : kNone;
    while (true) {
      size_t end = pos + bt.len(t);
      if (!is_dead(end) && (last == kNone || bt.valid_pair(last, t))) {
        out.push_back(t);
        pos = end;
        if (pos < n) next = bt.trie.longest(p + pos, n - pos, prefetch);
        break;
      }
      t = bt.shorter(t);
      if (t == kNone) {
        if (last == kNone) {  // cannot happen for tables that passed build_backtrack's checks
          out.resize(first);
          merge_large(p, n, out);
          return;
        }
        dead[pos >> 6] |= uint64_t{1} << (pos & 63);
        out.pop_back();
        pos -= bt.len(last);
        next = last;  // its shorter prefixes are tried next
        break;
      }
    }
  }
  for (size_t i = first; i < out.size(); ++i) out[i] = bt.id(out[i]);
  scratch.trim();
}

}  // namespace fastllm
