// CoreBPE from a decoded tokenizer.json (tokenizer_json.cpp reads it): the tokens, then each merge's two parts
// and the token it makes resolved to ids, with the messages of a file whose merges do not fit its vocabulary.
#include <algorithm>
#include <cstring>
#include <memory>

#include "bpe.h"
#include "bpe_backtrack.h"  // complete types for CoreBPE's members
#include "hash.h"
#include "vocab_io.h"

namespace fastllm {

namespace {

std::string bytelevel_text(std::string_view bytes) {
  std::string s;
  for (unsigned char c : bytes) append_utf8(kAlphabet.to_cp[c], s);
  return s;
}

// How Python's repr() writes a str of printable characters (as byte-level text is).
std::string py_repr(const std::string& s) {
  bool single = s.find('\'') != std::string::npos, dbl = s.find('"') != std::string::npos;
  char quote = single && !dbl ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    if (c == '\\' || c == quote) out += '\\';
    out += c;
  }
  return out + quote;
}

}  // namespace

std::unique_ptr<CoreBPE> CoreBPE::from_tokenizer_json(TokenizerJson& doc, std::vector<SpecialToken> specials,
                                                      std::string_view pattern, bool ignore_merges) {
  std::unique_ptr<CoreBPE> bpe(new CoreBPE());
  bpe->init_tokens(doc.vocab, specials, pattern);
  doc.vocab = Vocab{};
  using Merge = TokenizerJson::Merge;
  const std::vector<Merge>& list = doc.merges;
  const char* base = doc.merge_bytes.get();
  const size_t n = list.size(), size = doc.merge_bytes_size;
  auto right_len = [](const Merge& m) { return m.right_len & ~Merge::kList; };
  auto fail = [&](size_t i, const std::string& what) {
    const Merge& m = list[i];
    std::string l = bytelevel_text({base + m.off, m.left_len}), r = bytelevel_text({base + m.off + m.left_len, right_len(m)});
    std::string item = m.right_len & Merge::kList ? "[" + py_repr(l) + ", " + py_repr(r) + "]" : py_repr(l + " " + r);
    throw BpeError("model.merges[" + std::to_string(i) + "] = " + item + what);
  };
  Merges merges(n);
  std::vector<uint32_t> made(n);  // the id each merge makes
  // The token a merge makes is nearly always the one after the previous merge's (files list the
  // vocabulary by id and the merges by priority, and training numbers tokens as it merges): checking
  // that guess reads the arena in order. The other lookups, two or three per merge in a table larger
  // than the caches, are hashed a block of merges at a time and their slots prefetched first, so
  // that the misses overlap (as from_merge_text).
  auto makes = [&](uint32_t id, const char* p, size_t len) {
    if (id >= bpe->tokens_.size()) return false;
    const TokenRef& t = bpe->tokens_[id];
    return t.len == len && !t.special && std::memcmp(bpe->arena_.data() + t.off, p, len) == 0;
  };
  constexpr size_t kBlock = 8;
  BytesKey keys[kBlock][3];
  uint32_t guess[kBlock];  // kNoToken: looked up
  uint32_t last = 0;       // the id the previous merge made
  for (size_t b = 0; b < n; b += kBlock) {
    size_t e = std::min(n, b + kBlock);
    for (size_t i = b; i < e; ++i) {
      const Merge& m = list[i];
      size_t avail = size - m.off, len = m.left_len + right_len(m);
      keys[i - b][0] = make_key(base + m.off, m.left_len, avail);
      keys[i - b][1] = make_key(base + m.off + m.left_len, right_len(m), avail - m.left_len);
      bpe->ordinary_.prefetch(keys[i - b][0]);
      bpe->ordinary_.prefetch(keys[i - b][1]);
      guess[i - b] = makes(last + 1, base + m.off, len) ? ++last : kNoToken;
      if (guess[i - b] == kNoToken) {
        keys[i - b][2] = make_key(base + m.off, len, avail);
        bpe->ordinary_.prefetch(keys[i - b][2]);
      }
    }
    for (size_t i = b; i < e; ++i) {
      const Merge& m = list[i];
      std::string_view left(base + m.off, m.left_len), right(base + m.off + m.left_len, right_len(m));
      uint32_t a = bpe->ordinary_.find(left.data(), left.size(), keys[i - b][0]);
      uint32_t c = bpe->ordinary_.find(right.data(), right.size(), keys[i - b][1]);
      if (a == BytesMap::kMissing || c == BytesMap::kMissing) {
        std::string_view missing = a == BytesMap::kMissing ? left : right;
        uint32_t special = bpe->token_to_id(missing);  // an added token also listed in model.vocab
        fail(i, ": " + py_repr(bytelevel_text(missing)) +
                    (special == kNoToken ? " is not in model.vocab" : " is an added token, not an ordinary token"));
      }
      uint32_t id = guess[i - b] != kNoToken
                        ? guess[i - b]
                        : bpe->ordinary_.find(left.data(), left.size() + right.size(), keys[i - b][2]);
      if (id == BytesMap::kMissing) fail(i, " makes a token that is not in model.vocab");
      merges[i] = {a, c};
      made[i] = id;
    }
    last = made[e - 1];
  }
  doc.merges = {};
  doc.merge_bytes.reset();
  // Insert the pairs in the order of their home slots in pairs_ (PairMap hashes with mix64 into a
  // table_capacity(n) table), so that the inserts sweep the table rather than miss the caches once
  // each (a third of the insert time, measured on 233k merges). Stable, so a repeated merge still meets its
  // first occurrence first and keeps its first (highest) priority, as HF does. Any order is correct.
  bpe->pairs_.reset(n);
  const size_t cap = table_capacity(n), shift = 6;  // a bucket of 64 slots: 1 KB of the table
  auto bucket = [&](size_t i) {
    return ((mix64((uint64_t{merges[i].first} << 32) | merges[i].second) & (cap - 1)) >> shift);
  };
  std::vector<uint32_t> start(((cap - 1) >> shift) + 2, 0), order(n);  // [b + 1]: how many in bucket b
  for (size_t i = 0; i < n; ++i) ++start[bucket(i) + 1];
  for (size_t k = 1; k < start.size(); ++k) start[k] += start[k - 1];
  for (size_t i = 0; i < n; ++i) order[start[bucket(i)]++] = static_cast<uint32_t>(i);
  for (uint32_t i : order) bpe->pairs_.insert(merges[i].first, merges[i].second, PairMap::Merge{i, made[i]});
  bpe->init_merges(std::move(merges), ignore_merges);
  return bpe;
}

}  // namespace fastllm
