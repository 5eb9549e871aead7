// The backtracking matcher for regex.h, and the Pretokenizer built on it.
//
// The matcher runs a Program (regex_compile.cpp) with an explicit stack of frames instead of
// recursion, so neither pattern nor text size can overflow the C++ stack. A frame is a choice to
// come back to (an alternative, a quantifier that can give back or take one more character) or an
// undo record for a register. Atomic groups and lookaround drop the frames their body pushed
// (kCut), which is all that possessive quantifiers need too.
//
// Speed comes from doing less, not from a different algorithm: alternations dispatch on the next
// character (kBranch), a branch or a given-back character that cannot lead anywhere by the
// first-sets is skipped without a frame, single-character loops scan without a frame per
// character, and quantifiers at the very end of the pattern keep no frame at all. Memoization and
// the run cache below keep the known blow-ups polynomial; the step budget stops the rest.
#include "regex.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "regex_impl.h"

namespace fastllm {

namespace {

using rx::Inst;
using rx::Op;

constexpr size_t kNoMatch = static_cast<size_t>(-1);

class Matcher {
 public:
  Matcher(const rx::Program& prog, std::string_view text)
      : prog_(prog),
        s_(reinterpret_cast<const uint8_t*>(text.data())),
        n_(text.size()),
        budget_(Regex::kBaseSteps + Regex::kStepsPerByte * static_cast<uint64_t>(text.size())),
        memo_after_(kMemoAfterSteps + kMemoAfterStepsPerByte * static_cast<uint64_t>(text.size())),
        reg_depth_(prog.num_regs),
        reg_pos_(prog.num_regs) {}

  // The end of the highest-priority match that starts at `start`, or kNoMatch.
  size_t match_at(size_t start);

  // The leftmost match at or after `from`: its start goes to *begin, its end is returned.
  size_t search(size_t from, size_t* begin) {
    const rx::FirstSet& first = prog_.first[0];
    for (size_t at = from; at <= n_; at = next_boundary(at)) {
      if (!first.admits(s_, n_, at)) continue;
      const size_t end = match_at(at);
      if (end != kNoMatch) {
        *begin = at;
        return end;
      }
    }
    return kNoMatch;
  }

  size_t next_boundary(size_t pos) const {
    if (pos >= n_) return n_ + 1;
    size_t len;
    rx::decode_utf8(s_, n_, pos, &len);
    return pos + len;
  }

 private:
  enum FrameKind : uint32_t {
    kResume,      // continue at pc with pos
    kUndo,        // register pc had (aux, pos) before the write that pushed this
    kGiveBack,    // greedy kRepeat at pc ends at pos; give one back while pos > aux (its minimum);
                  // it started at aux3 and its scan stopped at aux2
    kTakeMore,    // lazy kRepeat at pc took aux characters ending at pos; retry with one more
    kNextBranch,  // kBranch at pc: aux holds the branches still to try at pos
    kFailed,      // every path from memo point pc at pos has failed: record it
  };
  struct Frame {
    FrameKind kind;
    uint32_t pc;
    size_t pos;
    size_t aux;
    size_t aux2;
    size_t aux3;
  };

  // Consumes one character of `set` at *pos, if there is one.
  bool take(const rx::CharSet& set, size_t* pos) const {
    if (*pos >= n_) return false;
    const uint8_t b = s_[*pos];
    if (b < 0x80) {
      if (!set.contains(b)) return false;
      ++*pos;
      return true;
    }
    size_t len;
    if (!set.contains(rx::decode_utf8(s_, n_, *pos, &len))) return false;
    *pos += len;
    return true;
  }

  bool word_before(size_t pos) const {
    if (pos == 0) return false;
    size_t len;
    return rx::is_word_char(rx::decode_utf8(s_, n_, rx::prev_boundary(s_, n_, pos), &len));
  }
  bool word_at(size_t pos) const {
    size_t len;
    return pos < n_ && rx::is_word_char(rx::decode_utf8(s_, n_, pos, &len));
  }

  bool check(uint32_t kind, size_t pos) const {
    switch (kind) {
      case rx::kStartText: return pos == 0;
      case rx::kEndText: return pos == n_;
      case rx::kStartLine: return pos == 0 || s_[pos - 1] == '\n';
      case rx::kEndLine: return pos == n_ || s_[pos] == '\n';
      case rx::kWordB: return word_before(pos) != word_at(pos);
      case rx::kNotWordB: return word_before(pos) == word_at(pos);
      case rx::kEndTextNl:
        for (size_t k = pos; k < n_; ++k)
          if (s_[k] != '\n') return false;
        return true;
    }
    return false;
  }

  void count(uint64_t steps) {
    steps_ += steps;
    if (steps_ > std::min(memo_after_, budget_)) over_limit();
  }
  void over_limit() {
    if (memo_.empty()) start_memo();
    memo_after_ = budget_;  // tried once
    if (steps_ > budget_)
      throw std::runtime_error("regex: the pattern needed more than " + std::to_string(budget_) +
                               " backtracking steps on a text of " + std::to_string(n_) +
                               " bytes (catastrophic backtracking); make it cheaper, e.g. with possessive "
                               "quantifiers or atomic groups");
  }

  // The frame stack: frames_[0, top_). Growing is the rare, out-of-line path.
  void push(FrameKind kind, uint32_t pc, size_t pos, size_t aux = 0, size_t aux2 = 0, size_t aux3 = 0) {
    if (top_ == frames_.size()) frames_.resize(2 * frames_.size() + 64);
    frames_[top_++] = Frame{kind, pc, pos, aux, aux2, aux3};
  }

  bool backtrack(uint32_t* pc, size_t* pos);

  // Memoization. At a kMemo (a loop head, or the end of a quantifier) whether any path reaches the
  // end of the pattern, or of the enclosing atomic group or lookahead, depends on the position
  // only (regex_compile.cpp). A kFailed frame sits under everything tried from there; popping it
  // means all of that failed, and the (point, position) is recorded: a later visit, from this
  // start position or another, fails at once. (Had a path succeeded, the match would have ended
  // the search, or the group's kCut would have dropped the frame: nothing is recorded then.) Every
  // (point, position) is thus explored once, which bounds patterns like (a|a)*b or (\w|\p{L})*x
  // by memo points x text size instead of exponentially. It costs a bit per (point, byte) and a
  // frame per visit, so it is switched on only once a text has taken more steps than the
  // tokenizer patterns ever need.
  static constexpr uint64_t kMemoAfterSteps = 100'000, kMemoAfterStepsPerByte = 16;
  static constexpr uint64_t kMaxMemoBits = uint64_t{1} << 33;  // 1 GiB
  void start_memo() {
    const uint64_t bits = (static_cast<uint64_t>(n_) + 1) * prog_.num_memos;
    if (bits == 0 || bits > kMaxMemoBits) return;  // the step budget alone guards such texts
    memo_.assign((bits + 63) / 64, 0);
  }
  uint64_t memo_bit(uint32_t point, size_t pos) const { return static_cast<uint64_t>(pos) * prog_.num_memos + point; }
  bool failed_before(uint32_t point, size_t pos) const {
    const uint64_t b = memo_bit(point, pos);
    return (memo_[b >> 6] >> (b & 63)) & 1;
  }
  void record_failure(uint32_t point, size_t pos) {
    const uint64_t b = memo_bit(point, pos);
    memo_[b >> 6] |= uint64_t{1} << (b & 63);
  }

  // Runs. A greedy kRepeat with a memo point after it (so what follows depends on the position
  // only) scans a run of its class from `entry` to `hi` and tries what follows at each end, longest
  // first. Once its frame is down to the shortest end (not cut by a group that succeeded), every
  // longer end is known to fail, for good.
  // A later entry inside the run with an unbounded maximum would scan to the same hi and try only
  // such ends, so it fails at once. Without this, `\s+$` on a long run of spaces followed by a
  // letter (DeepSeek's pattern) rescans the run from every start position: quadratic time.
  struct Run {
    size_t entry, hi;
  };
  bool run_failed(const Inst& in, size_t pos) const {
    if (in.y == 0 || in.max != rx::kInfinite) return false;
    const Run& r = runs_[in.y - 1];
    return r.entry < pos && pos <= r.hi;
  }
  void remember_run(const Inst& in, size_t entry, size_t hi) {
    if (in.y != 0) runs_[in.y - 1] = Run{entry, hi};
  }

  const rx::Program& prog_;
  const uint8_t* s_;
  size_t n_;
  uint64_t steps_ = 0, budget_, memo_after_;
  std::vector<uint64_t> memo_;  // bit pos * num_memos + point; empty while memoization is off
  std::vector<Run> runs_ = std::vector<Run>(prog_.num_memos, Run{1, 0});
  std::vector<Frame> frames_;
  size_t top_ = 0;
  std::vector<size_t> reg_depth_, reg_pos_;
};

size_t Matcher::match_at(size_t start) {
  const Inst* insts = prog_.insts.data();
  top_ = 0;
  uint32_t pc = 0;
  size_t pos = start;
  for (;;) {
    const Inst& in = insts[pc];
    bool ok = true;
    switch (in.op) {
      case Op::kChar: {
        size_t len = 1;
        ok = pos < n_ && (s_[pos] < 0x80 ? s_[pos] == in.x : rx::decode_utf8(s_, n_, pos, &len) == in.x);
        if (ok) pos += len, ++pc;
        break;
      }
      case Op::kSet:
        ok = take(prog_.sets[in.x], &pos);
        if (ok) ++pc;
        break;
      case Op::kRepeat: {
        const rx::CharSet& set = prog_.sets[in.x];
        size_t taken = 0, p = pos;
        if (in.mode == rx::kLazy) {
          while (taken < in.min && take(set, &p)) ++taken;
          ok = taken == in.min;
          if (ok && taken < in.max) push(kTakeMore, pc, p, taken);
        } else if (run_failed(in, pos)) {
          ok = false;
        } else {
          size_t min_end = pos;
          while (taken < in.max && take(set, &p))
            if (++taken == in.min) min_end = p;
          count(taken);
          ok = taken >= in.min;
          if (ok && in.mode == rx::kGreedy && taken > in.min) push(kGiveBack, pc, p, min_end, p, pos);
        }
        if (ok) pos = p, ++pc;
        break;
      }
      case Op::kSplit: {
        // Skip a branch that cannot start with the next character: no frame for a dead end.
        const bool x = prog_.first[in.x].admits(s_, n_, pos), y = prog_.first[in.y].admits(s_, n_, pos);
        if (x && y) push(kResume, in.y, pos);
        ok = x || y;
        pc = x ? in.x : in.y;
        break;
      }
      case Op::kBranch: {
        const rx::Branches& b = prog_.branches[in.x];
        uint64_t candidates = b.candidates(s_, n_, pos);
        ok = candidates != 0;
        if (!ok) break;
        const uint32_t first = b.targets[__builtin_ctzll(candidates)];
        candidates &= candidates - 1;  // the first candidate runs now, a frame keeps the others
        if (candidates != 0) push(kNextBranch, pc, pos, candidates);
        pc = first;
        break;
      }
      case Op::kJmp:
        pc = in.x;
        break;
      case Op::kAssert:
        ok = check(in.x, pos);
        ++pc;
        break;
      case Op::kMark:
      case Op::kSavePos:
        push(kUndo, in.x, reg_pos_[in.x], reg_depth_[in.x]);
        reg_depth_[in.x] = top_, reg_pos_[in.x] = pos;
        ++pc;
        break;
      case Op::kCut:
        top_ = reg_depth_[in.x];
        ++pc;
        break;
      case Op::kRestorePos:
        pos = reg_pos_[in.x];
        ++pc;
        break;
      case Op::kCheckAt:
        ok = pos == reg_pos_[in.x];
        ++pc;
        break;
      case Op::kProgress:
        pc = pos == reg_pos_[in.x] ? in.y : pc + 1;
        break;
      case Op::kBack:
        for (uint32_t k = 0; k < in.x && ok; ++k) {
          ok = pos > 0;
          if (ok) pos = rx::prev_boundary(s_, n_, pos);
        }
        ++pc;
        break;
      case Op::kPush:
        push(kResume, in.x, pos);
        ++pc;
        break;
      case Op::kMemo:
        if (!memo_.empty() && !(in.y != 0 && pos == reg_pos_[in.y - 1])) {  // see memo_point()
          ok = !failed_before(in.x, pos);
          if (ok) push(kFailed, in.x, pos);
        }
        ++pc;
        break;
      case Op::kFail:
        ok = false;
        break;
      case Op::kMatch:
        return pos;
    }
    if (!ok && !backtrack(&pc, &pos)) return kNoMatch;
  }
}

// Pops frames until one gives a new (pc, pos) to run from; false when none is left.
bool Matcher::backtrack(uint32_t* pc, size_t* pos) {
  while (top_ != 0) {
    count(1);
    Frame& f = frames_[top_ - 1];
    switch (f.kind) {
      case kResume:
        *pc = f.pc, *pos = f.pos;
        --top_;
        return true;
      case kUndo:
        reg_pos_[f.pc] = f.pos, reg_depth_[f.pc] = f.aux;
        --top_;
        break;
      case kGiveBack: {
        // Give back characters until what follows could start at the new end.
        const rx::FirstSet& next = prog_.first[f.pc + 1];
        size_t p = f.pos, given = 0;
        do {
          p = rx::prev_boundary(s_, n_, p), ++given;
        } while (p > f.aux && !next.admits(s_, n_, p));
        count(given);
        const uint32_t resume = f.pc + 1;
        if (p > f.aux) {
          f.pos = p;
        } else {
          remember_run(prog_.insts[f.pc], f.aux3, f.aux2);  // all but the shortest end have failed
          --top_;
          if (!next.admits(s_, n_, p)) break;
        }
        *pc = resume, *pos = p;
        return true;
      }
      case kFailed:
        record_failure(f.pc, f.pos);
        --top_;
        break;
      case kNextBranch: {
        const rx::Branches& b = prog_.branches[prog_.insts[f.pc].x];
        *pc = b.targets[__builtin_ctzll(f.aux)], *pos = f.pos;
        f.aux &= f.aux - 1;
        if (f.aux == 0) --top_;
        return true;
      }
      case kTakeMore: {
        const Inst& in = prog_.insts[f.pc];
        size_t p = f.pos;
        const uint32_t resume = f.pc + 1;
        if (!take(prog_.sets[in.x], &p)) {
          --top_;
          break;
        }
        if (++f.aux < in.max) {
          f.pos = p;
        } else {
          --top_;
        }
        *pc = resume, *pos = p;
        return true;
      }
    }
  }
  return false;
}

class RegexPretokenizer final : public Pretokenizer {
 public:
  explicit RegexPretokenizer(std::string_view pattern) : re_(pattern) {}
  void split(std::string_view text, std::vector<Span>& out) const override { re_.find_all(text, out, false); }
  const std::string& pattern() const override { return re_.pattern(); }

 private:
  Regex re_;
};

}  // namespace

Regex::Regex(std::string_view pattern)
    : pattern_(pattern), prog_(std::make_unique<const rx::Program>(rx::compile(pattern))) {}
Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

bool Regex::find(std::string_view text, size_t start, Span* match) const {
  if (start > text.size()) return false;
  Matcher m(*prog_, text);
  size_t begin;
  const size_t end = m.search(start, &begin);
  if (end == kNoMatch) return false;
  *match = Span(begin, end);
  return true;
}

// fancy-regex's Matches::next: after an empty match the next search starts one code point later,
// and an empty match that ends where the previous match ended is skipped.
void Regex::find_all(std::string_view text, std::vector<Span>& out, bool keep_empty) const {
  Matcher m(*prog_, text);
  size_t from = 0, last_end = kNoMatch;
  while (from <= text.size()) {
    size_t begin;
    const size_t end = m.search(from, &begin);
    if (end == kNoMatch) break;
    if (begin == end) {
      from = m.next_boundary(end);
      if (end == last_end) continue;
    } else {
      from = end;
    }
    last_end = end;
    if (begin != end || keep_empty) out.emplace_back(begin, end);
  }
}

std::unique_ptr<Pretokenizer> make_regex_pretokenizer(std::string_view pattern) {
  return std::make_unique<RegexPretokenizer>(pattern);
}

}  // namespace fastllm
