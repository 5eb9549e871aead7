// Byte-level BPE: the pure C++17 core of fastllm's tokenizer (no Python headers).
//
// Two merge semantics, one algorithm:
//   * ranks (tiktoken): a token's id is its rank; a piece that is a whole token is emitted as is,
//     otherwise adjacent parts are merged lowest-rank-first, where the rank of a pair is the rank of
//     its concatenated bytes.
//   * merges (HF tokenizers, GPT-2's vocab.bpe): a pair merges only if it is in the merges list, and
//     its priority is its position there. A piece that is a whole token takes the shortcut only if
//     the merges rebuild that token from its bytes (checked once per token, lazily).
// Ties go to the leftmost pair in both. Pieces come from a Pretokenizer (pretokenize.h).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hash.h"
#include "pretokenize.h"

namespace fastllm {

struct PieceCache;       // bpe_encode.cpp
struct BacktrackTables;   // bpe_backtrack.h
struct BacktrackScratch;  // bpe_backtrack.h

// An error in a vocabulary, merges list or request, with a message meant for the user.
class BpeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct SpecialToken {
  std::string text;
  uint32_t id;
  bool special;  // false: an HF "added token" that is always split out, whatever the policy
};

// How one encode call may spread its work over threads: a long text by groups of whole pieces (bpe_encode.cpp), a
// giant piece by parts (bpe_backtrack.cpp: why the ids stay exact). n bytes make min(threads, n / min_part)
// parts when that is 2 or more.
struct PieceThreads {
  unsigned threads = 1;
  // A part costs ~30 ms/MB of merging, a thread ~50 us to start: parts of 128 KB keep the start-up under 2%.
  size_t min_part = size_t{1} << 17;

  // The hardware's threads, at most 8: past that the serial rest of a call (pre-tokenization, the Python
  // list) costs more than the merging.
  static PieceThreads hardware();
  // Parts of a piece of n bytes (1: merged serially).
  size_t parts(size_t n) const {
    return std::max<size_t>(1, std::min<size_t>(threads, n / std::max<size_t>(min_part, 1)));
  }
  // Groups of pieces a text of n bytes in `pieces` pieces, the longest of `longest` bytes, is encoded in, one
  // per thread: parts(n) when the text holds at least 64 pieces per group and no piece is longer than a group
  // (a text that is mostly one giant piece has that piece cut into parts instead); else 1.
  size_t text_parts(size_t n, size_t longest, size_t pieces) const {
    size_t k = parts(n);
    return k >= 2 && pieces >= 64 * k && longest * k <= n ? k : 1;
  }
};

// What encode() does with each special token found in the text (indexed like specials()).
enum class SpecialPolicy : uint8_t { kDisallowed = 0, kAllowed = 1, kAsText = 2 };

// A vocabulary as the loaders produce it: the tokens' bytes back to back plus (offset, length, id) per
// token, so that reading 100k tokens makes no allocation per token. CoreBPE adopts the bytes as its arena.
struct Vocab {
  struct Token {
    uint32_t off, len, id;
  };
  std::string bytes;
  std::vector<Token> tokens;

  void add(std::string_view token, uint32_t id) {
    tokens.push_back(Token{static_cast<uint32_t>(bytes.size()), static_cast<uint32_t>(token.size()), id});
    bytes += token;
  }
  size_t size() const { return tokens.size(); }
  std::string_view token(size_t i) const { return std::string_view(bytes).substr(tokens[i].off, tokens[i].len); }
};

// Merges given as byte strings (GPT-2's vocab.bpe), resolved against the vocabulary by CoreBPE.
struct MergeText {
  struct Merge {
    uint32_t off, left_len, right_len, line;  // left then right at bytes[off]; line in `path`
  };
  std::string path, bytes;
  std::vector<Merge> merges;
};

// A Hugging Face tokenizer.json split for its loader (load_tokenizer_json): model.vocab decoded to token
// bytes and model.merges to the bytes of their two symbols, everything else left as JSON text for the
// caller to check.
struct TokenizerJson {
  // The first entry of model.vocab or model.merges that cannot be used. Not thrown: the caller reports
  // it after checking the fields a reader looks at first (model.type, ...), worded from the entry's JSON.
  struct Problem {
    enum class Kind { kNone, kVocabId, kVocabIdTooLarge, kVocabChar, kMergeShape, kMergeUnknown };
    Kind kind = Kind::kNone;
    size_t index = 0;         // merges: the entry's position
    std::string item, value;  // JSON text: the vocab key (or the merge) and the vocab value
    int side = 0;             // kMergeUnknown: 0 if the left symbol is not in model.vocab, else 1
  };
  struct Merge {
    uint32_t off, left_len, right_len;  // left then right at merge_bytes[off]
    // Written [left, right] or "left right" (for messages): the top bit of right_len, clear in the other
    // two, which the 2 GB limit on the file bounds.
    static constexpr uint32_t kList = 1u << 31;
  };
  static constexpr uint32_t kMaxId = (1u << 24) - 1;  // larger ids would size the id tables at gigabytes

  Vocab vocab;
  // The merges' symbols decoded to bytes, back to back. A buffer the size of the file left uninitialized
  // (pages never written cost nothing): copying them out would touch as many fresh pages again, and
  // a fresh page costs ~2 us here.
  std::unique_ptr<char[]> merge_bytes;
  size_t merge_bytes_size = 0;
  std::vector<Merge> merges;  // by priority
  // The document with model.vocab replaced by {} and model.merges by [] where they were an object and
  // a list; absent or of another type, they are left in place for the caller's messages.
  std::string rest;
  bool has_vocab = false, has_merges = false;  // cut out of `rest`
  Problem vocab_problem, merges_problem;
};

class CoreBPE {
 public:
  using Vocab = fastllm::Vocab;
  using Merges = std::vector<std::pair<uint32_t, uint32_t>>;  // (left id, right id), by priority
  ~CoreBPE();

  // tiktoken semantics: ranks are ids.
  static std::unique_ptr<CoreBPE> from_ranks(Vocab ranks, std::vector<SpecialToken> specials,
                                             std::string_view pattern);
  // HF semantics: merges[i] has priority i and yields the token whose bytes are the concatenation.
  // ignore_merges (HF's option of that name): a piece that is a whole token is always emitted as is.
  static std::unique_ptr<CoreBPE> from_merges(Vocab vocab, const Merges& merges, std::vector<SpecialToken> specials,
                                              std::string_view pattern, bool ignore_merges = false);
  // The same from merges as text; an unknown symbol is a BpeError "<merges.path>: line N: ...".
  static std::unique_ptr<CoreBPE> from_merge_text(Vocab vocab, const MergeText& merges,
                                                  std::vector<SpecialToken> specials, std::string_view pattern,
                                                  const std::string& vocab_path);
  // The same from a tokenizer.json without problems (tokenizer_json.cpp), its vocabulary and merges moved
  // out; a symbol that is not an ordinary token is a BpeError "model.merges[N] = ...".
  static std::unique_ptr<CoreBPE> from_tokenizer_json(TokenizerJson& doc, std::vector<SpecialToken> specials,
                                                      std::string_view pattern, bool ignore_merges);

  // `threads`: how a long text or a giant piece may be split (the default: one thread). The ids never depend
  // on it.
  void encode_ordinary(std::string_view text, std::vector<uint32_t>& out, const PieceThreads& threads = {}) const;
  // Splits out specials per `policy` (one entry per specials() element; missing entries mean
  // disallowed). Returns -1, or the index of the first disallowed special found, in which case
  // `out` is unspecified.
  long encode(std::string_view text, const std::vector<SpecialPolicy>& policy, std::vector<uint32_t>& out,
              const PieceThreads& threads = {}) const;
  // Appends the bytes of `ids`; throws BpeError naming the first id that is not in the vocabulary.
  void decode(const uint32_t* ids, size_t n, std::string& out) const;

  // Returns kNoToken if absent. Looks up ordinary tokens and specials.
  static constexpr uint32_t kNoToken = UINT32_MAX;
  uint32_t token_to_id(std::string_view bytes) const;
  bool has_id(uint32_t id) const { return id < tokens_.size() && tokens_[id].len != kNoToken; }
  std::string_view token_bytes(uint32_t id) const;  // throws BpeError if absent
  bool is_special(uint32_t id) const { return has_id(id) && tokens_[id].special; }

  size_t vocab_size() const { return tokens_.size(); }  // max id + 1 (holes allowed)
  size_t num_ordinary() const { return num_ordinary_; }
  bool uses_merges() const { return uses_merges_; }
  const std::vector<SpecialToken>& specials() const { return specials_; }
  const Pretokenizer& pretokenizer() const { return *pretokenizer_; }
  // Merges one piece's bytes (no pre-tokenization, no whole-token shortcut) with a chosen algorithm,
  // for tests and benchmarks. kSmall needs n <= 96; kLinear returns false if the vocabulary does not
  // allow it (bpe_backtrack.h), and splits the piece per `threads`. All give the same ids.
  enum class MergeAlgo { kSmall, kQueue, kLinear };
  bool merge_piece(std::string_view piece, MergeAlgo algo, std::vector<uint32_t>& out,
                   const PieceThreads& threads = {}) const;

  // Merges in priority order (for saving an HF tokenizer.json). For a ranks vocabulary: by rank, the
  // split of each token that BPE builds, as BPE of its own bytes makes it (bpe.cpp: why exactly those).
  Merges merges() const;

 private:
  static constexpr size_t kCopySlack = 16;
  static constexpr size_t kSmallPiece = 96;  // longer pieces merge through a queue, not O(n^2) scans
  static constexpr size_t kScanOnly = 12;    // shorter pieces always merge by scans (bpe_encode.cpp)
  // The linear-time path's tables cost 20-60 ms to build (bpe_backtrack.cpp), about what merging this
  // many bytes of pieces over PieceCache::kMaxBytes the other ways costs: built once that much has come.
  static constexpr size_t kBacktrackAfter = size_t{1} << 19;
  struct TokenRef {
    uint32_t off = 0, len = kNoToken;
    bool special = false;
  };
  CoreBPE() = default;
  void init_tokens(Vocab& vocab, std::vector<SpecialToken>& specials, std::string_view pattern);
  void init_merges(Merges merges, bool ignore_merges);
  void init_byte_pairs();
  void encode_piece(const char* p, size_t n, const BytesKey& key, PieceCache& cache, const PieceThreads& threads,
                    std::vector<uint32_t>& out) const;
  // The pieces `spans` of `text` (all of its pieces): in groups of pieces or a giant piece in parts per `threads`.
  void encode_pieces(std::string_view text, const std::vector<Span>& spans, std::vector<uint32_t>& out,
                     const PieceThreads& threads) const;
  // The pieces spans[0, count) of `text`, on this thread; linear_short: see encode_pieces.
  void encode_spans(std::string_view text, const Span* spans, size_t count, bool linear_short,
                    const PieceThreads& threads, std::vector<uint32_t>& out) const;
  void merge_small(const char* p, size_t n, std::vector<uint32_t>& out) const;
  void merge_large(const char* p, size_t n, std::vector<uint32_t>& out) const;
  // Linear time (bpe_backtrack.cpp); a giant piece is split over threads per `threads`.
  void merge_backtrack(const BacktrackTables& bt, const char* p, size_t n, BacktrackScratch& scratch,
                       std::vector<uint32_t>& out, const PieceThreads& threads = {}) const;
  // The same over `parts` threads; false (and `out` as it was) if the parts' encodings do not agree soon
  // enough (bpe_backtrack.cpp), or a part hits a dead end, which tables that passed build_backtrack's checks
  // never do.
  bool merge_backtrack_parallel(const BacktrackTables& bt, const char* p, size_t n, size_t parts,
                                BacktrackScratch& scratch, std::vector<uint32_t>& out) const;
  // The tables once kBacktrackAfter bytes of long pieces have come (counting this one of n bytes), else
  // nullptr; also nullptr if the vocabulary needs the other paths.
  const BacktrackTables* backtrack_for(size_t n) const;
  const BacktrackTables* backtrack_tables() const;  // builds them on the first call
  std::unique_ptr<BacktrackTables> build_backtrack() const;
  bool whole_token_ok(uint32_t id) const;
  // Priority and result of joining two adjacent parts: the one at a_off (id a) and the next (id b),
  // which ends at `end`. `readable` bytes may be read at p.
  PairMap::Merge pair(const char* p, size_t readable, size_t a_off, uint32_t a, uint32_t b, size_t end) const;

  std::string arena_;              // all token bytes, back to back
  std::vector<TokenRef> tokens_;   // indexed by id
  BytesMap ordinary_;              // bytes -> id of the ordinary tokens
  PairMap pairs_;                  // merges semantics only
  Merges merges_list_;             // merges semantics only, as given
  uint32_t byte_id_[256];          // id of each single-byte token
  std::vector<PairMap::Merge> byte_pair_;  // [a * 256 + b]: the merge of the single bytes a, b
  bool uses_merges_ = false;
  size_t num_ordinary_ = 0;
  // merges semantics: per token, 0 = not yet known, 1 = its bytes BPE-encode to itself, 2 = they do not
  mutable std::unique_ptr<std::atomic<uint8_t>[]> whole_ok_;
  std::vector<SpecialToken> specials_;
  bool special_first_byte_[256] = {};
  std::unique_ptr<Pretokenizer> pretokenizer_;
  mutable std::once_flag backtrack_once_;
  mutable std::unique_ptr<BacktrackTables> backtrack_;
  mutable std::atomic<bool> backtrack_built_{false};
  mutable std::atomic<uint64_t> long_piece_bytes_{0};
};

// GPT-2's reversible map from bytes to printable characters (the byte-level alphabet of
// encoder.json, vocab.bpe and HF tokenizer.json). Returns the UTF-8 of the character for byte b.
std::string byte_to_unicode(uint8_t b);
// Inverse over a UTF-8 string of such characters; false if a character is not in the alphabet.
bool unicode_to_bytes(std::string_view s, std::string& out);

// Loaders (vocab_io.cpp; tokenizer.json: tokenizer_json.cpp). Errors are BpeError with
// "<path>: <line>: <problem>" messages.
Vocab load_tiktoken_ranks(const std::string& path);
// GPT-2 encoder.json (byte-level string -> id) and vocab.bpe (one "left right" merge per line), for
// CoreBPE::from_merge_text (which resolves the merges' symbols).
std::pair<Vocab, MergeText> load_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);
// A Hugging Face tokenizer.json, for CoreBPE::from_tokenizer_json. Strict JSON (UTF-8, no NaN, nesting at
// most 128 deep); a top-level "model" key, or a "vocab" or "merges" key in it, that appears twice is an
// error; files of 2 GB or more are refused. Errors are BpeError "<path>: ...". The file is mapped, not
// copied, while it is read.
TokenizerJson load_tokenizer_json(const std::string& path);

}  // namespace fastllm
