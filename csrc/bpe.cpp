// Byte-level BPE: construction, lookup, decoding, the merges of a ranks vocabulary (see bpe.h for the two merge
// semantics; encoding is in bpe_encode.cpp).
#include "bpe.h"

#include <algorithm>
#include <cstring>

#include "bpe_backtrack.h"

namespace fastllm {

namespace {

std::string describe_bytes(std::string_view s) {
  std::string r;
  for (unsigned char c : s.substr(0, 40)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      r += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      r += "\\x";
      r += hex[c >> 4];
      r += hex[c & 15];
    }
  }
  if (s.size() > 40) r += "...";
  return r;
}

}  // namespace

// ==== Construction ====

void CoreBPE::init_tokens(Vocab& vocab, std::vector<SpecialToken>& specials, std::string_view pattern) {
  pretokenizer_ = make_pretokenizer(pattern);  // throws std::invalid_argument for a bad regex
  size_t max_id = 0, bytes = vocab.bytes.size();
  for (const Vocab::Token& t : vocab.tokens) {
    if (t.len == 0) throw BpeError("token id " + std::to_string(t.id) + " has empty bytes");
    if (t.len > BytesMap::kMaxLen)
      throw BpeError("token id " + std::to_string(t.id) + " is " + std::to_string(t.len) + " bytes long (at most " +
                     std::to_string(BytesMap::kMaxLen) + ")");
    if (t.id == kNoToken) throw BpeError("token id " + std::to_string(t.id) + " is too large");
    if (size_t{t.off} + t.len > vocab.bytes.size()) throw BpeError("token id " + std::to_string(t.id) + " is corrupt");
    max_id = std::max<size_t>(max_id, t.id);
  }
  for (auto& s : specials) {
    if (s.text.empty()) throw BpeError("special token " + std::to_string(s.id) + " is empty");
    if (s.id == kNoToken) throw BpeError("special token id " + std::to_string(s.id) + " is too large");
    max_id = std::max<size_t>(max_id, s.id);
    bytes += s.text.size();
  }
  if (bytes + kCopySlack >= UINT32_MAX) throw BpeError("vocabulary is larger than 4 GB");
  tokens_.assign(vocab.tokens.empty() && specials.empty() ? 0 : max_id + 1, TokenRef{});
  arena_ = std::move(vocab.bytes);  // adopted as is: tokens keep their offsets
  arena_.reserve(bytes + kCopySlack);

  // A special token may repeat an ordinary entry with the same id and bytes (GPT-2's encoder.json
  // lists <|endoftext|>); it is then only special, as in tiktoken.
  std::vector<uint32_t> special_ids;
  for (auto& s : specials) special_ids.push_back(s.id);
  std::sort(special_ids.begin(), special_ids.end());
  auto is_special_id = [&](uint32_t id) { return std::binary_search(special_ids.begin(), special_ids.end(), id); };

  ordinary_.reset(&arena_, vocab.size(), static_cast<uint32_t>(max_id));
  std::vector<uint32_t> order;  // ids of the ordinary tokens, in input order
  order.reserve(vocab.size());
  for (const Vocab::Token& t : vocab.tokens) {
    std::string_view tok(arena_.data() + t.off, t.len);
    if (!special_ids.empty() && is_special_id(t.id)) {
      auto it = std::find_if(specials.begin(), specials.end(), [&](const SpecialToken& s) { return s.id == t.id; });
      if (it->text != tok)
        throw BpeError("id " + std::to_string(t.id) + " is both the token '" + describe_bytes(tok) +
                       "' and the special token '" + describe_bytes(it->text) + "'");
      continue;
    }
    if (tokens_[t.id].len != kNoToken)
      throw BpeError("id " + std::to_string(t.id) + " is given to two tokens ('" +
                     describe_bytes(std::string_view(arena_).substr(tokens_[t.id].off, tokens_[t.id].len)) +
                     "' and '" + describe_bytes(tok) + "')");
    tokens_[t.id] = TokenRef{t.off, t.len, false};
    order.push_back(t.id);
  }
  // Insert in blocks whose slots are prefetched first: the table is larger than the caches, and
  // overlapping the misses halves the load time of a 100k vocabulary.
  constexpr size_t kBlock = 16;
  BytesKey keys[kBlock];
  for (size_t b = 0; b < order.size(); b += kBlock) {
    size_t e = std::min(order.size(), b + kBlock);
    for (size_t i = b; i < e; ++i) {
      const TokenRef& t = tokens_[order[i]];
      keys[i - b] = make_key(arena_.data() + t.off, t.len, arena_.size() - t.off);
      ordinary_.prefetch(keys[i - b]);
    }
    for (size_t i = b; i < e; ++i) {
      const TokenRef& t = tokens_[order[i]];
      if (!ordinary_.insert(t.off, t.len, order[i], keys[i - b])) {
        std::string_view tok(arena_.data() + t.off, t.len);
        throw BpeError("token '" + describe_bytes(tok) + "' appears twice (ids " +
                       std::to_string(ordinary_.find(tok.data(), tok.size())) + " and " + std::to_string(order[i]) +
                       ")");
      }
    }
  }
  num_ordinary_ = order.size();
  for (int b = 0; b < 256; ++b) {
    char c = static_cast<char>(b);
    byte_id_[b] = ordinary_.find(&c, 1);
    if (byte_id_[b] == BytesMap::kMissing)
      throw BpeError("the vocabulary has no token for the single byte 0x" + describe_bytes(std::string(1, c)) +
                     " (a byte-level BPE needs all 256)");
  }
  for (auto& s : specials) {
    if (tokens_[s.id].len != kNoToken)
      throw BpeError("special token '" + describe_bytes(s.text) + "' reuses id " + std::to_string(s.id));
    uint32_t off = static_cast<uint32_t>(arena_.size());
    arena_ += s.text;
    tokens_[s.id] = TokenRef{off, static_cast<uint32_t>(s.text.size()), true};
    special_first_byte_[static_cast<unsigned char>(s.text[0])] = true;
  }
  specials_ = std::move(specials);
  arena_.append(kCopySlack, '\0');  // decode() may read up to kCopySlack bytes past a token
}

std::unique_ptr<CoreBPE> CoreBPE::from_ranks(Vocab ranks, std::vector<SpecialToken> specials,
                                             std::string_view pattern) {
  std::unique_ptr<CoreBPE> bpe(new CoreBPE());
  bpe->init_tokens(ranks, specials, pattern);
  bpe->init_byte_pairs();
  return bpe;
}

std::unique_ptr<CoreBPE> CoreBPE::from_merges(Vocab vocab, const Merges& merges, std::vector<SpecialToken> specials,
                                              std::string_view pattern, bool ignore_merges) {
  std::unique_ptr<CoreBPE> bpe(new CoreBPE());
  bpe->init_tokens(vocab, specials, pattern);
  bpe->pairs_.reset(merges.size());
  std::string joined;
  for (size_t i = 0; i < merges.size(); ++i) {
    auto [a, b] = merges[i];
    if (!bpe->has_id(a) || !bpe->has_id(b) || bpe->is_special(a) || bpe->is_special(b))
      throw BpeError("merge " + std::to_string(i) + " refers to id " + std::to_string(bpe->has_id(a) ? b : a) +
                     ", which is not an ordinary token");
    joined.assign(bpe->token_bytes(a));
    joined += bpe->token_bytes(b);
    uint32_t id = bpe->ordinary_.find(joined.data(), joined.size());
    if (id == BytesMap::kMissing)
      throw BpeError("merge " + std::to_string(i) + " ('" + describe_bytes(bpe->token_bytes(a)) + "' + '" +
                     describe_bytes(bpe->token_bytes(b)) + "') makes a token that is not in the vocabulary");
    // A repeated merge keeps its first (highest) priority, as HF does.
    bpe->pairs_.insert(a, b, PairMap::Merge{static_cast<uint32_t>(i), id});
  }
  bpe->init_merges(merges, ignore_merges);
  return bpe;
}

std::unique_ptr<CoreBPE> CoreBPE::from_merge_text(Vocab vocab, const MergeText& text,
                                                  std::vector<SpecialToken> specials, std::string_view pattern,
                                                  const std::string& vocab_path) {
  std::unique_ptr<CoreBPE> bpe(new CoreBPE());
  bpe->init_tokens(vocab, specials, pattern);
  const size_t n = text.merges.size();
  bpe->pairs_.reset(n);
  Merges merges(n);
  auto fail = [&](const MergeText::Merge& m, const std::string& what) {
    throw BpeError(text.path + ": line " + std::to_string(m.line) + ": " + what);
  };
  auto bytelevel = [](std::string_view bytes) {
    std::string s;
    for (unsigned char c : bytes) s += byte_to_unicode(c);
    return s;
  };
  // Three lookups per merge (left, right, both) in a table larger than the caches: hash a block of
  // merges and prefetch their slots first, so that the misses overlap.
  constexpr size_t kBlock = 8;
  BytesKey keys[kBlock][3];
  const char* base = text.bytes.data();
  for (size_t b = 0; b < n; b += kBlock) {
    size_t e = std::min(n, b + kBlock);
    for (size_t i = b; i < e; ++i) {
      const MergeText::Merge& m = text.merges[i];
      size_t avail = text.bytes.size() - m.off;
      keys[i - b][0] = make_key(base + m.off, m.left_len, avail);
      keys[i - b][1] = make_key(base + m.off + m.left_len, m.right_len, avail - m.left_len);
      keys[i - b][2] = make_key(base + m.off, m.left_len + m.right_len, avail);
      for (const BytesKey& k : keys[i - b]) bpe->ordinary_.prefetch(k);
    }
    for (size_t i = b; i < e; ++i) {
      const MergeText::Merge& m = text.merges[i];
      std::string_view left(base + m.off, m.left_len), right(base + m.off + m.left_len, m.right_len);
      uint32_t a = bpe->ordinary_.find(left.data(), left.size(), keys[i - b][0]);
      uint32_t c = bpe->ordinary_.find(right.data(), right.size(), keys[i - b][1]);
      if (a == BytesMap::kMissing || c == BytesMap::kMissing)
        fail(m, "'" + bytelevel(a == BytesMap::kMissing ? left : right) + "' is not in " + vocab_path);
      uint32_t id = bpe->ordinary_.find(left.data(), left.size() + right.size(), keys[i - b][2]);
      if (id == BytesMap::kMissing)
        fail(m, "'" + bytelevel(left) + " " + bytelevel(right) + "' makes a token that is not in " + vocab_path);
      bpe->pairs_.insert(a, c, PairMap::Merge{static_cast<uint32_t>(i), id});
      merges[i] = {a, c};
    }
  }
  bpe->init_merges(std::move(merges), false);
  return bpe;
}

void CoreBPE::init_merges(Merges merges, bool ignore_merges) {
  uses_merges_ = true;
  merges_list_ = std::move(merges);
  init_byte_pairs();
  whole_ok_.reset(new std::atomic<uint8_t>[tokens_.size()]);
  for (size_t i = 0; i < tokens_.size(); ++i) whole_ok_[i].store(ignore_merges ? 1 : 0, std::memory_order_relaxed);
}

// The first round of every merge looks up pairs of single bytes: keep all 65536 in a table, filled
// from the two-byte tokens (ranks) or the merges of two single bytes.
void CoreBPE::init_byte_pairs() {
  byte_pair_.assign(256 * 256, PairMap::Merge{PairMap::kMissing, PairMap::kMissing});
  std::vector<int16_t> byte_of(tokens_.size(), -1);
  for (int b = 0; b < 256; ++b) byte_of[byte_id_[b]] = static_cast<int16_t>(b);
  auto slot = [&](uint32_t id_a, uint32_t id_b) -> PairMap::Merge* {
    if (byte_of[id_a] < 0 || byte_of[id_b] < 0) return nullptr;
    return &byte_pair_[static_cast<size_t>(byte_of[id_a]) * 256 + static_cast<size_t>(byte_of[id_b])];
  };
  if (uses_merges_) {
    for (size_t i = merges_list_.size(); i-- > 0;) {  // backwards: the first of repeated merges wins
      auto [a, b] = merges_list_[i];
      if (PairMap::Merge* m = slot(a, b)) *m = pairs_.find(a, b);
    }
    return;
  }
  for (uint32_t id = 0; id < tokens_.size(); ++id) {
    if (tokens_[id].len != 2 || tokens_[id].special) continue;
    const char* t = arena_.data() + tokens_[id].off;
    byte_pair_[static_cast<unsigned char>(t[0]) * 256 + static_cast<unsigned char>(t[1])] = PairMap::Merge{id, id};
  }
}

// ==== Lookup ====

uint32_t CoreBPE::token_to_id(std::string_view bytes) const {
  uint32_t id = ordinary_.find(bytes.data(), bytes.size());
  if (id != BytesMap::kMissing) return id;
  for (auto& s : specials_)
    if (s.text == bytes) return s.id;
  return kNoToken;
}

std::string_view CoreBPE::token_bytes(uint32_t id) const {
  if (!has_id(id)) throw BpeError("token id " + std::to_string(id) + " is not in the vocabulary");
  return std::string_view(arena_).substr(tokens_[id].off, tokens_[id].len);
}

// ==== Decoding ====

void CoreBPE::decode(const uint32_t* ids, size_t n, std::string& out) const {
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t id = ids[i];
    if (id >= tokens_.size() || tokens_[id].len == kNoToken)
      throw BpeError("token id " + std::to_string(id) + " is not in the vocabulary (size " +
                     std::to_string(tokens_.size()) + ")");
    total += tokens_[id].len;
  }
  // Tokens are short: copy a fixed 16 bytes (one vector move, where a memcpy of len bytes is a libc
  // call) and advance by the real length. The arena and `out` have 16 bytes of slack for the overrun.
  size_t base = out.size();
  out.resize(base + total + kCopySlack);
  char* dst = out.data() + base;
  for (size_t i = 0; i < n; ++i) {
    const TokenRef& t = tokens_[ids[i]];
    const char* src = arena_.data() + t.off;
    if (t.len <= kCopySlack) std::memcpy(dst, src, kCopySlack);
    else std::memcpy(dst, src, t.len);
    dst += t.len;
  }
  out.resize(base + total);
}

// ==== Merges of a ranks vocabulary ====

CoreBPE::Merges CoreBPE::merges() const {
  if (uses_merges_) return merges_list_;
  // tiktoken merges any two adjacent parts that make a token, but a merge a + b -> t happens in a text
  // only as the last merge of BPE on t's own bytes: the merges inside t's bytes never depend on what
  // surrounds them, so they are those of t alone. That split is what BPE of t's bytes without t itself
  // ends in, when it ends in two parts (else BPE never builds t). Listed by t's rank, these splits are an
  // HF merges list that gives exactly tiktoken's ids (with ignore_merges for the tokens it never builds).
  Merges result;
  struct Part {
    uint32_t start, id, rank;  // rank: of merging with the next part, kNoToken if they do not merge
  };
  std::vector<Part> parts;
  for (uint32_t id = 0; id < tokens_.size(); ++id) {
    if (!has_id(id) || tokens_[id].special || tokens_[id].len < 2) continue;
    std::string_view t = token_bytes(id);
    parts.clear();
    for (size_t k = 0; k < t.size(); ++k)
      parts.push_back(Part{static_cast<uint32_t>(k), byte_id_[static_cast<unsigned char>(t[k])], kNoToken});
    parts.push_back(Part{static_cast<uint32_t>(t.size()), 0, kNoToken});  // a sentinel: where the last part ends
    auto update = [&](size_t k) {
      uint32_t r = k + 2 < parts.size() ? ordinary_.find(t.data() + parts[k].start, parts[k + 2].start - parts[k].start)
                                        : kNoToken;
      parts[k].rank = r == id ? kNoToken : r;  // (BytesMap::kMissing is kNoToken)
    };
    for (size_t k = 0; k + 2 < parts.size(); ++k) update(k);
    while (parts.size() > 3) {
      size_t best = 0;
      for (size_t k = 1; k + 2 < parts.size(); ++k)
        if (parts[k].rank < parts[best].rank) best = k;
      if (parts[best].rank == kNoToken) break;
      parts[best].id = parts[best].rank;
      parts.erase(parts.begin() + static_cast<long>(best) + 1);
      update(best);
      if (best > 0) update(best - 1);
    }
    if (parts.size() == 3) result.push_back({parts[0].id, parts[1].id});
  }
  return result;
}

}  // namespace fastllm
