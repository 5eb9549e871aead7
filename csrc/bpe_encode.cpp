// Encoding (the rest of CoreBPE is in bpe.cpp): pieces looked up whole, remembered per call, or merged by the
// scan, the queue or the linear-time path; a long text in groups of pieces over threads.
#include <algorithm>
#include <cstring>
#include <memory>

#include "bpe.h"
#include "bpe_backtrack.h"
#include "threads.h"

namespace fastllm {

// Pieces that are not whole tokens repeat within a text (word forms in Russian or German, indented
// lines in code): their merges are remembered per thread for the rest of the current encode call.
// Entries of earlier calls, or of another tokenizer, are invalid by their epoch, so a call never
// sees work done by an earlier one (benchmarks that repeat a text are not flattered).
struct PieceCache {
  static constexpr size_t kSlots = 2048, kMaxBytes = 24, kMaxIds = 8;
  struct Entry {
    uint32_t epoch = 0;
    uint8_t len = 0, num_ids = 0;
    char bytes[kMaxBytes];
    uint32_t ids[kMaxIds];
  };
  uint32_t epoch = 0;
  Entry entries[kSlots];
  BacktrackScratch backtrack;  // the same thread's working memory for long pieces
  bool linear_short = false;   // this call's short pieces take the linear path too (encode_ordinary)

  static PieceCache& get() {
    thread_local std::unique_ptr<PieceCache> cache(new PieceCache());
    return *cache;
  }
  void begin_call() {
    if (++epoch == 0) {  // wrapped: forget everything rather than confuse two calls 2^32 apart
      for (Entry& e : entries) e.epoch = 0;
      epoch = 1;
    }
  }
};

namespace {

// Appends the ids of parts 1.. of a text after part 0's, which are in `out` already.
void append_parts(std::vector<uint32_t>& out, const std::vector<std::vector<uint32_t>>& parts) {
  size_t total = out.size();
  for (const auto& v : parts) total += v.size();
  out.reserve(total);
  for (const auto& v : parts) out.insert(out.end(), v.begin(), v.end());
}

}  // namespace

inline void CoreBPE::encode_piece(const char* p, size_t n, const BytesKey& key, PieceCache& cache,
                                  const PieceThreads& threads, std::vector<uint32_t>& out) const {
  if (n == 1) {
    out.push_back(byte_id_[static_cast<unsigned char>(*p)]);
    return;
  }
  uint32_t id = ordinary_.find(p, n, key);
  if (id != BytesMap::kMissing && (!uses_merges_ || whole_token_ok(id))) {
    out.push_back(id);
    return;
  }
  if (n > PieceCache::kMaxBytes) {
    if (const BacktrackTables* bt = backtrack_for(n)) merge_backtrack(*bt, p, n, cache.backtrack, out, threads);
    else if (n <= kSmallPiece) merge_small(p, n, out);
    else merge_large(p, n, out);
    return;
  }
  PieceCache::Entry& e = cache.entries[(key.hash >> 20) & (PieceCache::kSlots - 1)];
  if (e.epoch == cache.epoch && e.len == n && std::memcmp(e.bytes, p, n) == 0) {
    out.insert(out.end(), e.ids, e.ids + e.num_ids);
    return;
  }
  size_t before = out.size();
  if (n > kScanOnly && cache.linear_short) merge_backtrack(*backtrack_, p, n, cache.backtrack, out);
  else merge_small(p, n, out);
  size_t count = out.size() - before;
  if (count <= PieceCache::kMaxIds) {
    e.epoch = cache.epoch;
    e.len = static_cast<uint8_t>(n);
    e.num_ids = static_cast<uint8_t>(count);
    std::memcpy(e.bytes, p, n);
    std::memcpy(e.ids, out.data() + before, count * sizeof(uint32_t));
  }
}

// ==== Encoding ====

void CoreBPE::encode_ordinary(std::string_view text, std::vector<uint32_t>& out, const PieceThreads& threads) const {
  // A long text is pre-tokenized in parts on threads where the pattern can cut it near equal shares
  // (Pretokenizer::cut_at_or_after; pre-tokenization is ~40% of encoding English), then each part's pieces are
  // encoded on its thread too, unless a piece is too long for groups of pieces (text_parts: a giant piece, which
  // encode_pieces cuts into parts instead).
  const size_t parts = threads.parts(text.size());
  std::vector<size_t> cut{0};
  for (size_t i = 1; i < parts; ++i) {
    // within a quarter of a share past it: parts of about equal cost, or the text as one
    const size_t share = i * text.size() / parts;
    const size_t c = pretokenizer_->cut_at_or_after(text, share, share + text.size() / (4 * parts) + 1);
    if (c >= text.size() || c <= cut.back()) break;
    cut.push_back(c);
  }
  if (parts < 2 || cut.size() < parts) {
    thread_local std::vector<Span> spans;
    spans.clear();
    pretokenizer_->split(text, spans);
    return encode_pieces(text, spans, out, threads);
  }
  cut.push_back(text.size());
  auto part = [&](size_t g) { return text.substr(cut[g], cut[g + 1] - cut[g]); };
  std::vector<std::vector<Span>> spans(parts);  // offsets within each part
  on_threads(parts, [&](size_t g) { pretokenizer_->split(part(g), spans[g]); });
  size_t longest = 0, count = 0;
  for (const auto& v : spans) {
    count += v.size();
    for (const Span& s : v) longest = std::max(longest, s.second - s.first);
  }
  if (threads.text_parts(text.size(), longest, count) >= 2) {
    std::vector<std::vector<uint32_t>> ids(parts - 1);  // part 0 appends to `out`
    on_threads(parts, [&](size_t g) { encode_pieces(part(g), spans[g], g == 0 ? out : ids[g - 1], PieceThreads{}); });
    append_parts(out, ids);
    return;
  }
  std::vector<Span> all;  // the text's pieces
  all.reserve(count);
  for (size_t g = 0; g < parts; ++g)
    for (const Span& s : spans[g]) all.emplace_back(s.first + cut[g], s.second + cut[g]);
  encode_pieces(text, all, out, threads);
}

void CoreBPE::encode_pieces(std::string_view text, const std::vector<Span>& spans, std::vector<uint32_t>& out,
                            const PieceThreads& threads) const {
  // Pieces of 13 to 24 bytes that miss the cache take the linear path too when this text keeps its tables
  // in the caches (a quarter of its bytes or more in long pieces: text without spaces, CJK): then it is
  // faster than the scan, whose hash lookups miss. In other text (code) the scan is.
  bool linear_short = false;
  if (backtrack_built_.load(std::memory_order_acquire) && backtrack_ != nullptr) {
    size_t long_bytes = 0;
    for (const Span& s : spans)
      if (s.second - s.first > PieceCache::kMaxBytes) long_bytes += s.second - s.first;
    linear_short = long_bytes * 4 >= text.size();
  }
  size_t parts = threads.parts(text.size());  // 1 for a text under 2 * min_part: no pass over its pieces
  if (parts >= 2) {
    size_t longest = 0;
    for (const Span& s : spans) longest = std::max(longest, s.second - s.first);
    parts = threads.text_parts(text.size(), longest, spans.size());
  }
  if (parts < 2) return encode_spans(text, spans.data(), spans.size(), linear_short, threads, out);
  // A long text: groups of whole pieces with about as many bytes each, one per thread. Each piece's ids
  // depend on its own bytes only, so the groups' ids joined are the text's.
  std::vector<size_t> cut{0};
  for (size_t i = 0, bytes = 0; i < spans.size() && cut.size() < parts; ++i) {
    bytes += spans[i].second - spans[i].first;
    if (bytes * parts >= text.size() * cut.size()) cut.push_back(i + 1);
  }
  cut.push_back(spans.size());
  const size_t groups = cut.size() - 1;
  std::vector<std::vector<uint32_t>> ids(groups - 1);  // group 0 appends to `out`
  const Span* all = spans.data();
  on_threads(groups, [&](size_t g) {
    encode_spans(text, all + cut[g], cut[g + 1] - cut[g], linear_short, PieceThreads{},  // pieces: one thread each
                 g == 0 ? out : ids[g - 1]);
  });
  append_parts(out, ids);
}

void CoreBPE::encode_spans(std::string_view text, const Span* spans, size_t count, bool linear_short,
                           const PieceThreads& threads, std::vector<uint32_t>& out) const {
  PieceCache& cache = PieceCache::get();
  cache.begin_call();
  cache.linear_short = linear_short;
  out.reserve(out.size() + count + count / 4);
  // Most pieces are whole tokens, so the cost is one hash lookup each: hash a block of pieces and
  // prefetch their slots first, so that the cache misses of a block overlap.
  constexpr size_t kBlock = 16;
  BytesKey keys[kBlock];
  for (size_t b = 0; b < count; b += kBlock) {
    size_t e = std::min(count, b + kBlock);
    for (size_t i = b; i < e; ++i) {
      size_t len = spans[i].second - spans[i].first;
      // A piece longer than any token is never looked up: its megabytes are not hashed.
      keys[i - b] = len > BytesMap::kMaxLen ? BytesKey{} : make_key(text.data() + spans[i].first, len,
                                                                    text.size() - spans[i].first);
      ordinary_.prefetch(keys[i - b]);
    }
    for (size_t i = b; i < e; ++i)
      encode_piece(text.data() + spans[i].first, spans[i].second - spans[i].first, keys[i - b], cache, threads, out);
  }
}

long CoreBPE::encode(std::string_view text, const std::vector<SpecialPolicy>& policy, std::vector<uint32_t>& out,
                     const PieceThreads& threads) const {
  auto policy_of = [&](size_t k) {
    if (!specials_[k].special) return SpecialPolicy::kAllowed;
    return k < policy.size() ? policy[k] : SpecialPolicy::kDisallowed;
  };
  size_t start = 0;  // beginning of the ordinary text not yet encoded
  for (size_t i = 0; i < text.size(); ++i) {
    if (!special_first_byte_[static_cast<unsigned char>(text[i])]) continue;
    long best = -1;
    bool disallowed = false;
    for (size_t k = 0; k < specials_.size(); ++k) {
      const std::string& s = specials_[k].text;
      if (s.size() > text.size() - i || std::memcmp(text.data() + i, s.data(), s.size()) != 0) continue;
      SpecialPolicy pk = policy_of(k);
      if (pk == SpecialPolicy::kDisallowed) {
        if (!disallowed || s.size() > specials_[best].text.size()) best = static_cast<long>(k);
        disallowed = true;
      } else if (pk == SpecialPolicy::kAllowed && !disallowed &&
                 (best < 0 || s.size() > specials_[best].text.size())) {
        best = static_cast<long>(k);
      }
    }
    if (disallowed) return best;
    if (best < 0) continue;  // only specials encoded as text start here
    encode_ordinary(text.substr(start, i - start), out, threads);
    out.push_back(specials_[best].id);
    start = i + specials_[best].text.size();
    i = start - 1;
  }
  encode_ordinary(text.substr(start), out, threads);
  return -1;
}

}  // namespace fastllm
