// Open-addressing hash tables for the tokenizer's two lookups: byte string -> id and (id, id) -> merge.
//
// Both are built once and then only read, from many threads at once. Linear probing over a
// power-of-two table at most half full keeps a lookup to one or two cache lines.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace fastllm {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ULL;
  x ^= x >> 32;
  return x;
}

// A byte string's first 8 bytes (zero-padded) and its hash. Most tokens are at most 8 bytes: the
// inline word settles their lookup without touching the token bytes (one cache miss, not two).
struct BytesKey {
  uint64_t w0, hash;
};

// `avail` >= n bytes are readable at p. When 8 are, one unaligned load and a mask replace a short
// variable-length copy, whose byte stores would stall the 8-byte load that reads them back.
inline BytesKey make_key(const char* p, size_t n, size_t avail) {
  uint64_t w0 = 0;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (avail >= 8) {
    std::memcpy(&w0, p, 8);
    if (n < 8) w0 &= (uint64_t{1} << (8 * n)) - 1;
  } else {
    std::memcpy(&w0, p, n < 8 ? n : 8);
  }
#else
  (void)avail;
  std::memcpy(&w0, p, n < 8 ? n : 8);
#endif
  uint64_t h = (w0 * 0x9e3779b97f4a7c15ULL) ^ (n * 0xff51afd7ed558ccdULL);
  for (size_t i = 8; i < n; i += 8) {  // longer tokens: fold in the rest
    uint64_t x = 0;
    std::memcpy(&x, p + i, n - i < 8 ? n - i : 8);
    h = (h ^ x) * 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 31;
  }
  return BytesKey{w0, mix64(h)};
}
inline BytesKey make_key(const char* p, size_t n) { return make_key(p, n, n); }

inline size_t table_capacity(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 1) cap <<= 1;
  return cap;
}

// Maps byte strings (views into an arena the owner keeps alive) to 32-bit ids. 16-byte slots: the
// first 8 bytes, the id, the length and 16 bits of the hash; longer keys finish the comparison in the
// arena through the offset of their id.
class BytesMap {
 public:
  static constexpr uint32_t kMissing = UINT32_MAX;
  static constexpr size_t kMaxLen = UINT16_MAX;  // callers reject longer tokens before inserting

  // max_id: ids will be at most this (a hint; larger ones grow the offsets table).
  void reset(const std::string* arena, size_t expected, uint32_t max_id = 0) {
    arena_ = arena;
    slots_.assign(table_capacity(expected), Slot{});
    mask_ = slots_.size() - 1;
    off_.assign(size_t{max_id} + 1, 0);
  }

  // Returns false if the key is already present (the first id is kept).
  bool insert(uint32_t off, uint32_t len, uint32_t id) { return insert(off, len, id, make_key(arena_->data() + off, len)); }
  bool insert(uint32_t off, uint32_t len, uint32_t id, const BytesKey& k) {
    const char* p = arena_->data() + off;
    size_t i = k.hash & mask_;
    for (; slots_[i].id != kMissing; i = (i + 1) & mask_)
      if (matches(slots_[i], p, len, k)) return false;
    if (off_.size() <= id) off_.resize(size_t{id} + 1, 0);
    off_[id] = off;
    slots_[i] = Slot{k.w0, id, static_cast<uint16_t>(len), static_cast<uint16_t>(k.hash >> 48)};
    return true;
  }

  void prefetch(const BytesKey& k) const { __builtin_prefetch(&slots_[k.hash & mask_]); }

  uint32_t find(const char* p, size_t len, const BytesKey& k) const {
    if (len > kMaxLen) return kMissing;
    for (size_t i = k.hash & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id == kMissing) return kMissing;
      if (matches(s, p, len, k)) return s.id;
    }
  }
  uint32_t find(const char* p, size_t len) const { return find(p, len, make_key(p, len)); }

 private:
  struct Slot {
    uint64_t w0 = 0;
    uint32_t id = kMissing;
    uint16_t len = 0, tag = 0;
  };
  bool matches(const Slot& s, const char* p, size_t len, const BytesKey& k) const {
    if (s.w0 != k.w0 || s.tag != static_cast<uint16_t>(k.hash >> 48) || s.len != len)
      return false;
    return len <= 8 || std::memcmp(arena_->data() + off_[s.id] + 8, p + 8, len - 8) == 0;
  }
  const std::string* arena_ = nullptr;
  std::vector<Slot> slots_;
  std::vector<uint32_t> off_;  // arena offset of each id's bytes
  size_t mask_ = 0;
};

// Maps a pair of token ids to the merge that joins them: its priority (lower merges first) and the
// id of the merged token.
class PairMap {
 public:
  struct Merge {
    uint32_t rank, id;
  };
  static constexpr uint32_t kMissing = UINT32_MAX;

  void reset(size_t expected) {
    slots_.assign(table_capacity(expected), Slot{});
    mask_ = slots_.size() - 1;
  }

  bool insert(uint32_t a, uint32_t b, Merge m) {
    uint64_t key = (uint64_t{a} << 32) | b;
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.merge.rank == kMissing) {
        s = Slot{key, m};
        return true;
      }
      if (s.key == key) return false;
    }
  }

  Merge find(uint32_t a, uint32_t b) const {
    uint64_t key = (uint64_t{a} << 32) | b;
    for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.merge.rank == kMissing || s.key == key) return s.merge;
    }
  }

 private:
  struct Slot {
    uint64_t key = 0;
    Merge merge{kMissing, kMissing};
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

}  // namespace fastllm
