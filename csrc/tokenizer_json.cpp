// Reading a Hugging Face tokenizer.json with a byte-level BPE model: one strict-JSON pass over the mapped
// file decodes model.vocab and model.merges (the bulk of it) and leaves the rest as JSON text for
// fastllm/_tokenizer_json.py to check (bpe_from_json.cpp then resolves the merges; json_cursor.h is the JSON).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bpe.h"
#include "json_cursor.h"
#include "vocab_io.h"

namespace fastllm {

namespace {

int bytelevel_byte(uint32_t cp) { return cp < 512 ? kAlphabet.from_cp[cp] : -1; }

// One pass over the document: validates all of it as strict JSON, decodes the top-level model's vocab
// and merges, and notes where they lie so that `rest` can leave them out. About 1 GB/s: the hot loops
// keep their position in locals (a store through char* would make the compiler reload members).
class TokenizerJsonReader : JsonCursor {
 public:
  TokenizerJsonReader(const std::string& path, std::string_view text) : JsonCursor(path, text) {}

  TokenizerJson read() {
    if (s_.size() >= TokenizerJson::Merge::kList) throw BpeError(path_ + ": the file is 2 GB or larger");
    skip_ws();
    if (peek() == '{') top_object();
    else value(0);
    skip_ws();
    if (i_ != s_.size()) error("extra data after the JSON value");
    if (merges_pending_) {  // model.merges came before model.vocab
      i_ = merges_span_.first;
      merges();
    }
    std::pair<size_t, size_t> cuts[2] = {vocab_span_, merges_span_};
    if (cuts[1].first < cuts[0].first) std::swap(cuts[0], cuts[1]);
    size_t at = 0;
    for (auto [from, to] : cuts) {
      if (to == 0) continue;  // not cut
      out_.rest.append(s_.data() + at, from - at);
      out_.rest += s_[from] == '{' ? "{}" : "[]";
      at = to;
    }
    out_.rest.append(s_.data() + at, s_.size() - at);
    return std::move(out_);
  }

 private:
  using Problem = TokenizerJson::Problem;

  // A string of GPT-2 byte-level characters at i_ (its opening quote), written as the bytes they stand
  // for at dst; returns the new end. A character outside the alphabet clears `ok` and writes nothing;
  // with kSplit, a space (the separator of "left right") writes nothing and sets *split to dst.
  template <bool kSplit>
  char* bytelevel_string(char* dst, bool& ok, size_t* spaces = nullptr, char** split = nullptr) {
    ++i_;
    while (true) {
      const char* p = at();
      while (p < end_) {
        auto c = static_cast<unsigned char>(*p);
        if (c >= '!' && c <= '~' && c != '"' && c != '\\') {  // printable ASCII stands for itself
          *dst++ = static_cast<char>(c);
          ++p;
        } else if (c >= 0xC2 && c <= 0xC7 && p + 1 < end_ && (static_cast<unsigned char>(p[1]) & 0xC0) == 0x80) {
          int b = kAlphabet.from_cp[((c & 0x1Fu) << 6) | (static_cast<unsigned char>(p[1]) & 0x3Fu)];
          if (b < 0) ok = false;
          else *dst++ = static_cast<char>(b);
          p += 2;
        } else {
          break;
        }
      }
      seek(p);
      if (p < end_ && *p == '"') {
        ++i_;
        return dst;
      }
      uint32_t cp = one_char();
      if (kSplit && cp == ' ') {
        ++*spaces;
        *split = dst;
        continue;
      }
      int b = bytelevel_byte(cp);
      if (b < 0) ok = false;
      else *dst++ = static_cast<char>(b);
    }
  }
  // ---- the fast path of model.vocab and model.merges ----
  // Nearly every entry is plain: keys of printable ASCII and two-byte characters of the alphabet, ids
  // of at most 8 digits, "left right" with one space. These read such an entry from p (nullptr for
  // anything else, which the general code then reads from the entry's start, with its messages).

  // A string at p (its opening quote): its bytes at dst; returns the end of the string, *dst_end the end
  // of the bytes; with kSplit, one unescaped space is allowed and *split set to where it was.
  template <bool kSplit>
  const char* fast_string(const char* p, char* dst, char** dst_end, char** split = nullptr) const {
    ++p;
    while (p < end_) {
      auto c = static_cast<unsigned char>(*p);
      if (c >= '!' && c <= '~' && c != '"' && c != '\\') {
        *dst++ = static_cast<char>(c);
        ++p;
      } else if (c == '"') {
        *dst_end = dst;
        return p + 1;
      } else if (c >= 0xC2 && c <= 0xC7 && end_ - p >= 2 && (static_cast<unsigned char>(p[1]) & 0xC0) == 0x80) {
        int b = kAlphabet.from_cp[((c & 0x1Fu) << 6) | (static_cast<unsigned char>(p[1]) & 0x3Fu)];
        if (b < 0) return nullptr;
        *dst++ = static_cast<char>(b);
        p += 2;
      } else if (kSplit && c == ' ' && *split == nullptr) {
        *split = dst;
        ++p;
      } else {
        return nullptr;
      }
    }
    return nullptr;
  }
  // An id at p: 1 to 8 digits without a leading zero, not followed by more of a number.
  const char* fast_id(const char* p, uint32_t* id) const {
    uint32_t v = 0;
    const char* start = p;
    while (p < end_ && *p >= '0' && *p <= '9' && p - start < 8) v = v * 10 + static_cast<uint32_t>(*p++ - '0');
    if (p == start || (*start == '0' && p - start > 1) || p == end_ || (*p >= '0' && *p <= '9') || *p == '.' ||
        *p == 'e' || *p == 'E')
      return nullptr;
    *id = v;
    return p;
  }
  // "key": id
  const char* fast_vocab_entry(const char* p, char* dst, char** dst_end, uint32_t* id) const {
    if (p == end_ || *p != '"' || !(p = fast_string<false>(p, dst, dst_end))) return nullptr;
    p = skip_ws(p);
    if (p == end_ || *p != ':') return nullptr;
    p = skip_ws(p + 1);
    return p < end_ ? fast_id(p, id) : nullptr;
  }
  // ["left", "right"] or "left right"
  const char* fast_merge(const char* p, char* dst, char** split, char** dst_end, bool* list) const {
    *split = nullptr;
    if (p == end_) return nullptr;
    if (*p == '"') {
      *list = false;
      p = fast_string<true>(p, dst, dst_end, split);
      return p && *split ? p : nullptr;
    }
    *list = true;
    if (*p != '[') return nullptr;
    p = skip_ws(p + 1);
    if (p == end_ || *p != '"' || !(p = fast_string<false>(p, dst, split))) return nullptr;
    p = skip_ws(p);
    if (p == end_ || *p != ',') return nullptr;
    p = skip_ws(p + 1);
    if (p == end_ || *p != '"' || !(p = fast_string<false>(p, *split, dst_end))) return nullptr;
    p = skip_ws(p);
    return p < end_ && *p == ']' ? p + 1 : nullptr;
  }

  // ---- the document ----
  void top_object() {
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    bool seen_model = false;
    do {
      if (key_text() == "model") {
        if (seen_model) twice("model", "the top-level object");
        seen_model = true;
        if (peek() == '{') {
          model();
          continue;
        }
      }
      value(1);
    } while (next('}'));
  }

  void model() {
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    bool seen_vocab = false, seen_merges = false;
    do {
      std::string key = key_text();
      if (key == "vocab") {
        if (seen_vocab) twice("vocab", "model");
        seen_vocab = true;
        if (peek() == '{') {
          vocab_span_.first = i_;
          vocab();
          vocab_span_.second = i_;
          out_.has_vocab = true;
          continue;
        }
      } else if (key == "merges") {
        if (seen_merges) twice("merges", "model");
        seen_merges = true;
        if (peek() == '[') {
          merges_span_.first = i_;
          if (seen_vocab) merges();
          else value(2), merges_pending_ = true;  // decoded at the end (the vocab decides whether to)
          merges_span_.second = i_;
          out_.has_merges = true;
          continue;
        }
      }
      value(2);
    } while (next('}'));
  }

  // model.vocab: byte-level token -> id, decoded to out_.vocab.
  void vocab() {
    // A token's bytes are never more than its JSON text: decode into a buffer of the document's size,
    // left uninitialized (only the pages written are touched), then copy out what was used.
    std::unique_ptr<char[]> buf(new char[s_.size()]);
    char* dst = buf.get();
    Vocab& v = out_.vocab;
    v.tokens.reserve(s_.size() / 6);  // an entry takes 6 bytes or more ("x":0,); unused capacity is never touched
    ++i_;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return;
    }
    do {
      char* end;
      uint32_t fast_id;
      if (const char* p = fast_vocab_entry(at(), dst, &end, &fast_id); p && fast_id <= TokenizerJson::kMaxId) {
        v.tokens.push_back(
            Vocab::Token{static_cast<uint32_t>(dst - buf.get()), static_cast<uint32_t>(end - dst), fast_id});
        dst = end;
        seek(p);
        continue;
      }
      if (peek() != '"') error("expected a string key");
      size_t key_start = i_;
      bool in_alphabet = true;
      char* token_end = bytelevel_string<false>(dst, in_alphabet);
      size_t key_end = i_;
      skip_ws();
      expect(':');
      skip_ws();
      size_t value_start = i_;
      uint64_t id = 0;
      bool is_id = false;
      if (peek() == '-' || (peek() >= '0' && peek() <= '9')) is_id = number(&id);
      else value(3);
      Problem::Kind kind = !is_id                      ? Problem::Kind::kVocabId
                           : id > TokenizerJson::kMaxId ? Problem::Kind::kVocabIdTooLarge
                           : !in_alphabet               ? Problem::Kind::kVocabChar
                                                        : Problem::Kind::kNone;
      if (kind == Problem::Kind::kNone) {
        v.tokens.push_back(Vocab::Token{static_cast<uint32_t>(dst - buf.get()),
                                        static_cast<uint32_t>(token_end - dst), static_cast<uint32_t>(id)});
        dst = token_end;
      } else if (out_.vocab_problem.kind == Problem::Kind::kNone) {
        out_.vocab_problem.kind = kind;  // Python checks the id first, then the characters
        out_.vocab_problem.item = std::string(s_.substr(key_start, key_end - key_start));
        out_.vocab_problem.value = std::string(s_.substr(value_start, i_ - value_start));
      }
    } while (next('}'));
    size_t used = static_cast<size_t>(dst - buf.get());
    v.bytes.reserve(used + 4096);  // CoreBPE adopts the bytes, then appends the specials' text and 16 bytes
    v.bytes.assign(buf.get(), used);
    vocab_ok_ = out_.vocab_problem.kind == Problem::Kind::kNone;
  }

  // model.merges: "left right" or [left, right] entries, decoded to the bytes of their symbols.
  void merges() {
    constexpr uint32_t kList = TokenizerJson::Merge::kList;
    bool keep = vocab_ok_;  // else the vocabulary's problem is reported first: only validate
    out_.merge_bytes.reset(new char[s_.size() + 1]);  // symbols are never longer than their JSON text
    char* const buf = out_.merge_bytes.get();
    char* dst = buf;
    if (keep) out_.merges.reserve(s_.size() / 6);  // as vocab()
    ++i_;
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return;
    }
    size_t n = 0;
    do {
      if (keep && out_.merges_problem.kind == Problem::Kind::kNone) {
        char *split, *end;
        bool list;
        if (const char* p = fast_merge(at(), dst, &split, &end, &list)) {
          out_.merges.push_back(TokenizerJson::Merge{static_cast<uint32_t>(dst - buf),
                                                     static_cast<uint32_t>(split - dst),
                                                     static_cast<uint32_t>(end - split) | (list ? kList : 0)});
          dst = end;
          seek(p);
          ++n;
          continue;
        }
      }
      size_t start = i_, parts = 0, spaces = 0;
      bool shape_ok = true, ok[2] = {true, true}, list = peek() == '[';
      char *split = nullptr, *e = dst;
      if (peek() == '"') {  // "left right", split at spaces (escaped ones too)
        e = bytelevel_string<true>(dst, ok[0], &spaces, &split);
        shape_ok = spaces == 1;
      } else if (list) {
        ++i_;
        skip_ws();
        if (peek() != ']') {
          do {
            if (peek() != '"' || parts >= 2) {
              shape_ok = false;
              value(4);
            } else {
              if (parts == 1) split = e;
              e = bytelevel_string<false>(e, ok[parts]);
            }
            ++parts;
          } while (next(']'));
        } else {
          ++i_;
        }
        shape_ok = shape_ok && parts == 2;
      } else {
        value(3);
        shape_ok = false;
      }
      if (keep && out_.merges_problem.kind == Problem::Kind::kNone) {
        if (shape_ok && ok[0] && ok[1]) {
          out_.merges.push_back(TokenizerJson::Merge{static_cast<uint32_t>(dst - buf),
                                                     static_cast<uint32_t>(split - dst),
                                                     static_cast<uint32_t>(e - split) | (list ? kList : 0)});
          dst = e;
        } else {
          Problem& p = out_.merges_problem;
          p.kind = shape_ok ? Problem::Kind::kMergeUnknown : Problem::Kind::kMergeShape;
          p.index = n;
          p.item = std::string(s_.substr(start, i_ - start));
          p.side = ok[0] ? 1 : 0;
        }
      }
      ++n;
    } while (next(']'));
    out_.merge_bytes_size = static_cast<size_t>(dst - buf);
  }

  TokenizerJson out_;
  std::pair<size_t, size_t> vocab_span_{0, 0}, merges_span_{0, 0};
  bool vocab_ok_ = false, merges_pending_ = false;
};

// A file's text, mapped rather than read: a 10 MB read() into fresh memory costs 3-10 ms here, its
// mapping 1.5 ms. Files that cannot be mapped (pipes, empty files) are read.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
      size_ = static_cast<size_t>(st.st_size);
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      if (p != MAP_FAILED) map_ = static_cast<const char*>(p);
    }
    if (fd >= 0) ::close(fd);
    if (map_ == nullptr) read_ = read_file(path);  // and its error messages
  }
  ~MappedFile() {
    if (map_ != nullptr) ::munmap(const_cast<char*>(map_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view text() const { return map_ != nullptr ? std::string_view(map_, size_) : std::string_view(read_); }

 private:
  const char* map_ = nullptr;
  size_t size_ = 0;
  std::string read_;
};

}  // namespace

TokenizerJson load_tokenizer_json(const std::string& path) {
  MappedFile file(path);
  return TokenizerJsonReader(path, file.text()).read();
}

}  // namespace fastllm
