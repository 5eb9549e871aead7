// A byte trie over the vocabulary, stored as a double array: the child of node s on byte c sits at
// slot base[s] + c and is valid when that slot's check == s. Finding the longest token at a position
// costs one load per byte walked, and siblings are adjacent in memory (the top levels stay cached).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

namespace fastllm {

class PrefixTrie {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  // Builds the trie of `keys` (distinct, non-empty); key i is stored with value values[i]. Returns, for
  // each key, its node and the index of the longest key that is a proper prefix of it (kNone if none).
  void build(const std::vector<std::string_view>& keys, const std::vector<uint32_t>& values,
             std::vector<uint32_t>& node_of, std::vector<uint32_t>& longest_prefix);

  // The value of the longest key that is a prefix of p[0, n), or kNone. on_value(v) sees every value
  // on the way, as soon as it is found (to prefetch what the caller will read for it).
  template <typename OnValue>
  uint32_t longest(const char* p, size_t n, OnValue on_value) const {
    uint32_t s = 0, best = kNone;
    for (size_t i = 0; i < n; ++i) {
      uint32_t t = nodes_[s].base + static_cast<unsigned char>(p[i]);
      if (nodes_[t].check != s) break;
      s = t;
      if (nodes_[s].value != kNone) {
        best = nodes_[s].value;
        on_value(best);
      }
    }
    return best;
  }
  uint32_t longest(const char* p, size_t n) const {
    return longest(p, n, [](uint32_t) {});
  }

  void set_value(uint32_t node, uint32_t value) { nodes_[node].value = value; }

 private:
  static constexpr uint32_t kFree = UINT32_MAX;  // check of an unused slot
  struct Node {
    uint32_t base = 0;     // children at base + byte; 0 for a leaf (its lookups land on check != s)
    uint32_t check = kFree;  // parent node
    uint32_t value = kNone;
  };
  // The lowest base at which every byte in `bytes` (ascending) lands on a free slot; grows nodes_.
  uint32_t place(const unsigned char* bytes, size_t count);

  std::vector<Node> nodes_;
  size_t first_free_ = 1;  // no free slot below it
};

inline void PrefixTrie::build(const std::vector<std::string_view>& keys, const std::vector<uint32_t>& values,
                              std::vector<uint32_t>& node_of, std::vector<uint32_t>& longest_prefix) {
  nodes_.assign(1024, Node{});
  nodes_[0].check = 0;  // the root occupies slot 0
  first_free_ = 1;
  node_of.assign(keys.size(), kNone);
  longest_prefix.assign(keys.size(), kNone);
  // Most-significant-byte radix partition, depth first: an item is a node and the keys below it,
  // order[lo, hi), all of length >= depth and sharing their first `depth` bytes; `prefix` is the key
  // that ends at the nearest ancestor holding one.
  std::vector<uint32_t> order(keys.size()), scratch(keys.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  struct Item {
    uint32_t node, depth, lo, hi, prefix;
  };
  std::vector<Item> stack{{0, 0, 0, static_cast<uint32_t>(keys.size()), kNone}};
  uint32_t count[256] = {}, start[256];
  unsigned char bytes[256];
  while (!stack.empty()) {
    Item it = stack.back();
    stack.pop_back();
    // Count the next bytes, listing the distinct ones (most nodes have one or two children: a loop
    // over all 256 byte values per node would dominate).
    size_t num = 0;
    uint32_t rest = it.lo;  // keys that end here move first (at most one: keys are distinct)
    for (uint32_t k = it.lo; k < it.hi; ++k) {
      std::string_view key = keys[order[k]];
      if (key.size() == it.depth) {
        nodes_[it.node].value = values[order[k]];
        node_of[order[k]] = it.node;
        longest_prefix[order[k]] = it.prefix;
        it.prefix = order[k];
        std::swap(order[k], order[rest++]);
      } else {
        auto c = static_cast<unsigned char>(key[it.depth]);
        if (count[c]++ == 0) bytes[num++] = c;
      }
    }
    if (num == 0) continue;
    std::sort(bytes, bytes + num);
    for (uint32_t j = 0, at = rest; j < num; ++j) {
      start[bytes[j]] = at;
      at += count[bytes[j]];
    }
    uint32_t base = place(bytes, num);
    nodes_[it.node].base = base;
    for (size_t j = 0; j < num; ++j) nodes_[base + bytes[j]].check = it.node;
    if (num == 1) {  // all keys go to the one child: nothing to partition
      stack.push_back(Item{base + bytes[0], it.depth + 1, rest, it.hi, it.prefix});
      count[bytes[0]] = 0;
      continue;
    }
    for (uint32_t k = rest; k < it.hi; ++k) scratch[start[static_cast<unsigned char>(keys[order[k]][it.depth])]++] = order[k];
    std::copy(scratch.begin() + rest, scratch.begin() + it.hi, order.begin() + rest);
    for (size_t j = num; j-- > 0;) {  // start[c] now ends c's range
      uint32_t c = bytes[j];
      stack.push_back(Item{base + c, it.depth + 1, start[c] - count[c], start[c], it.prefix});
      count[c] = 0;
    }
  }
  // Lookups index base + byte for every node, leaves included (base 0): keep 256 slots past the last.
  size_t last = nodes_.size();
  while (last > 0 && nodes_[last - 1].check == kFree) --last;
  nodes_.resize(std::max<size_t>(last, 1) + 256);
  nodes_.shrink_to_fit();
}

inline uint32_t PrefixTrie::place(const unsigned char* bytes, size_t count) {
  while (first_free_ < nodes_.size() && nodes_[first_free_].check != kFree) ++first_free_;
  for (size_t q = first_free_;; ++q) {
    if (q + 256 >= nodes_.size()) nodes_.resize(nodes_.size() * 2);
    if (nodes_[q].check != kFree || q < bytes[0]) continue;
    uint32_t base = static_cast<uint32_t>(q - bytes[0]);
    bool fits = true;
    for (size_t j = 1; j < count && fits; ++j) fits = nodes_[base + bytes[j]].check == kFree;
    if (fits) return base;
  }
}

}  // namespace fastllm
