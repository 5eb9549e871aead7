// Linear-time merging of long pieces: the backtracking encoder over BacktrackTables (see
// bpe_backtrack.h for why it gives exactly the ids of rank-ordered BPE).
#include "bpe_backtrack.h"

#include <algorithm>
#include <thread>

#include "bpe.h"
#include "threads.h"

namespace fastllm {

CoreBPE::~CoreBPE() = default;  // here, where BacktrackTables is complete

PieceThreads PieceThreads::hardware() {
  // Asked once: hardware_concurrency() reads /sys (syscalls), and every encode call asks.
  static const unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  PieceThreads t;
  t.threads = threads;
  return t;
}

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

bool CoreBPE::merge_piece(std::string_view piece, MergeAlgo algo, std::vector<uint32_t>& out,
                          const PieceThreads& threads) const {
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
        merge_backtrack(*bt, piece.data(), piece.size(), scratch, out, threads);
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
    bt->max_len = std::max(bt->max_len, tokens_[t].len);
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

namespace {

// Where the backtracking encoder stands in a piece p[0, n): its stack (handles, in `out` past `first`) is the
// BPE encoding of p[0, pos), and `next` is the token to try at pos (the longest match there, or the token
// just popped, whose shorter prefixes come next).
struct Walk {
  size_t pos;
  uint32_t next;
};

// Greedy longest match with backtracking, from `w` until pos >= stop (<= n). `dead` marks positions that no
// valid encoding of the piece reaches with a token boundary (the encoding of a prefix is unique, so a position
// that failed once fails always); it must cover every position up to min(n, stop - 1 + bt.max_len). Returns
// false if no token fits with the stack empty, which cannot happen for tables that passed build_backtrack's
// checks.
//
// Every token pushed forms a valid pair with the one below it, so at each return the stack is a sequence of
// reachable tokens whose neighbouring pairs are all valid: the BPE encoding of p[0, pos) (bpe_backtrack.h).
bool backtrack_steps(const BacktrackTables& bt, const char* p, size_t n, size_t stop, size_t first, Walk& w,
                     std::vector<uint64_t>& dead, std::vector<uint32_t>& out) {
  constexpr uint32_t kNone = BacktrackTables::kNone;
  auto is_dead = [&](size_t i) { return (dead[i >> 6] >> (i & 63)) & 1; };
  auto prefetch = [&](uint32_t h) { __builtin_prefetch(&bt.pool[h]); };
  size_t pos = w.pos;
  uint32_t next = w.next;
  while (pos < stop) {
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
        if (last == kNone) return false;
        dead[pos >> 6] |= uint64_t{1} << (pos & 63);
        out.pop_back();
        pos -= bt.len(last);
        next = last;  // its shorter prefixes are tried next
        break;
      }
    }
  }
  w = Walk{pos, next};
  return true;
}

// Words of `dead` for positions up to min(n, stop - 1 + max_len).
size_t dead_words(const BacktrackTables& bt, size_t n, size_t stop) {
  return std::min(n, stop - 1 + bt.max_len) / 64 + 1;
}

}  // namespace

void CoreBPE::merge_backtrack(const BacktrackTables& bt, const char* p, size_t n, BacktrackScratch& scratch,
                              std::vector<uint32_t>& out, const PieceThreads& threads) const {
  if (n == 0) return;
  size_t parts = threads.parts(n);
  if (parts >= 2 && merge_backtrack_parallel(bt, p, n, parts, scratch, out)) return;
  const size_t first = out.size();
  // A giant piece makes up to n tokens (random letters: 0.6 n): room for them once, not by doubling (copies of
  // megabytes). Pages never written cost nothing.
  if (n > (size_t{1} << 16) && out.capacity() - first < n) out.reserve(first + n);
  scratch.dead.assign(n / 64 + 1, 0);
  Walk w{0, bt.trie.longest(p, n)};
  if (!backtrack_steps(bt, p, n, n, first, w, scratch.dead, out)) {
    out.resize(first);
    merge_large(p, n, out);
    return;
  }
  for (size_t i = first; i < out.size(); ++i) out[i] = bt.id(out[i]);
  scratch.trim();
}

// One giant piece over `parts` threads. Part i starts at byte b[i] and is encoded on its own: E_i, the BPE
// encoding of p[b[i], n), built by a backtracking encoder started at b[i] (phase 1 runs each encoder in its own
// thread until it passes b[i + 1]). Then, from the right, each encoder goes on past b[i + 1] until its stack
// ends at a position q that is a token boundary of E_{i + 1} and its top token forms a valid pair with E_{i + 1}'s
// token starting at q; E_i is then its stack followed by E_{i + 1} from q (phase 2, serial; usually a few tokens).
//
// Why that is exact: the stack is the BPE encoding of p[b[i], q) (backtrack_steps), so all its neighbouring pairs
// are valid; E_{i + 1} from a token boundary q is a tail of a valid sequence, so all its pairs are valid too; the
// pair at q was checked. A sequence of reachable tokens whose neighbouring pairs are all valid is the BPE encoding
// of its bytes, and the only one (bpe_backtrack.h), so E_i is the BPE encoding of p[b[i], n), and E_0 that of the
// piece. An encoder that reaches the end of the piece first is the serial encoder from b[i]: E_i is its stack.
bool CoreBPE::merge_backtrack_parallel(const BacktrackTables& bt, const char* p, size_t n, size_t parts,
                                       BacktrackScratch& scratch, std::vector<uint32_t>& out) const {
  // Part starts (any offsets would be exact; these make the parts' own encodings agree with the piece's sooner).
  // The encoding of a run of one symbol ('a' * n, an emoji repeated) is periodic from the piece's start, and a
  // part's encoding from an offset off that period never shares a boundary with it: offsets are multiples of
  // 20160 = 2^6 * 3^2 * 5 * 7 (every period up to 10 bytes, and most short ones, divides it) where parts are
  // large enough, then moved off UTF-8 continuation bytes.
  constexpr size_t kAlign = 20160;
  const size_t align = n / parts >= 4 * kAlign ? kAlign : 1;
  std::vector<size_t> b{0};
  for (size_t i = 1; i < parts; ++i) {
    size_t at = std::max(b.back() + 1, (i * n / parts + align / 2) / align * align);
    for (int k = 0; k < 3 && at < n && (static_cast<unsigned char>(p[at]) & 0xC0) == 0x80; ++k) ++at;
    if (at < n) b.push_back(at);
  }
  parts = b.size();
  b.push_back(n);

  struct Part {
    std::vector<uint32_t> own_stack;
    std::vector<uint64_t> own_dead;
    std::vector<uint32_t>* stack;  // part 0 works in `out` and the caller's scratch
    std::vector<uint64_t>* dead;
    size_t first = 0;
    Walk w{0, 0};
    bool ok = false;
  };
  std::vector<Part> part(parts);
  const size_t first = out.size();
  for (size_t i = 0; i < parts; ++i) {
    part[i].stack = i == 0 ? &out : &part[i].own_stack;
    part[i].dead = i == 0 ? &scratch.dead : &part[i].own_dead;
    part[i].first = i == 0 ? first : 0;
  }
  on_threads(parts, [&](size_t i) {
    Part& q = part[i];
    const char* s = p + b[i];
    size_t m = n - b[i], stop = b[i + 1] - b[i];
    // Room for every token at once (at most one a byte): part 0 grows into the whole piece's ids in `out`.
    q.stack->reserve(q.first + (i == 0 ? n : stop + bt.max_len));
    q.dead->assign(dead_words(bt, m, stop), 0);
    q.w = Walk{0, bt.trie.longest(s, m)};
    q.ok = backtrack_steps(bt, s, m, stop, q.first, q.w, *q.dead, *q.stack);
  });
  auto give_up = [&] {
    out.resize(first);
    return false;
  };
  for (Part& q : part)
    if (!q.ok) return give_up();

  // E_i as runs of part stacks: stack[from, to) of `part`, whose first token starts at byte `pos`.
  struct Run {
    size_t part, from, to, pos;
  };
  std::vector<Run> tail{{parts - 1, 0, part[parts - 1].stack->size(), b[parts - 1]}}, joined;
  for (size_t i = parts - 1; i-- > 0;) {
    Part& q = part[i];
    const char* s = p + b[i];
    size_t m = n - b[i];
    // Where agreement is given up on. Text whose encodings from b[i] and b[i + 1] never agree (a period they
    // are not aligned to) would otherwise make each encoder run to the piece's end: O(parts * n). Past this
    // the serial merge takes over, for at most ~1.1 times its own time.
    size_t limit = std::min(n, b[i + 1] + (b[i + 1] - b[i]) / 16 + 4096);
    // A cursor over E_{i + 1}: token k of run r, starting at byte at.
    size_t r = 0, k = tail[0].from, at = tail[0].pos;
    bool synced = false;
    while (true) {
      size_t here = b[i] + q.w.pos;
      while (at < here) {
        at += bt.len((*part[tail[r].part].stack)[k]);
        if (++k == tail[r].to && ++r < tail.size()) k = tail[r].from;
      }
      if (at == here && here < n && bt.valid_pair(q.stack->back(), (*part[tail[r].part].stack)[k])) {
        synced = true;
        break;
      }
      if (q.w.pos == m) break;
      if (here > limit) return give_up();
      size_t words = dead_words(bt, m, q.w.pos + 1);
      if (q.dead->size() < words) q.dead->resize(std::min(std::max(words, 2 * q.dead->size()), m / 64 + 1), 0);
      if (!backtrack_steps(bt, s, m, q.w.pos + 1, q.first, q.w, *q.dead, *q.stack)) return give_up();
    }
    joined.assign(1, Run{i, q.first, q.stack->size(), b[i]});
    if (synced) {
      joined.push_back(Run{tail[r].part, k, tail[r].to, at});
      joined.insert(joined.end(), tail.begin() + static_cast<long>(r) + 1, tail.end());
    }
    tail.swap(joined);
  }

  // E_0: its runs made ids where they lie (in parallel), then appended to part 0's, already in place in `out`.
  on_threads(tail.size(), [&](size_t j) {
    std::vector<uint32_t>& st = *part[tail[j].part].stack;
    for (size_t k = tail[j].from; k < tail[j].to; ++k) st[k] = bt.id(st[k]);
  });
  size_t total = 0;
  for (const Run& run : tail) total += run.to - run.from;
  out.resize(first + (tail[0].to - tail[0].from));
  out.reserve(first + total);
  for (size_t j = 1; j < tail.size(); ++j) {
    const std::vector<uint32_t>& st = *part[tail[j].part].stack;
    out.insert(out.end(), st.begin() + static_cast<long>(tail[j].from), st.begin() + static_cast<long>(tail[j].to));
  }
  scratch.trim();
  return true;
}

}  // namespace fastllm
