// Regex compiler: syntax tree -> Program for the backtracking matcher in regex.cpp, plus the
// first-character analysis the matcher uses to skip hopeless branches and start positions.
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "regex_impl.h"

namespace fastllm::rx {

namespace {

// Counted repetition is compiled by copying its body; this caps what `(...){1000}{1000}`-style
// patterns can cost in memory.
constexpr size_t kMaxInsts = 1 << 20;

bool nullable(const Node& n) {
  switch (n.kind) {
    case Node::kChar:
    case Node::kSet:
      return false;
    case Node::kConcat:
      for (const Node& k : n.kids)
        if (!nullable(k)) return false;
      return true;
    case Node::kAlt:
      for (const Node& k : n.kids)
        if (nullable(k)) return true;
      return false;
    case Node::kRepeat:
      return n.min == 0 || nullable(n.kids[0]);
    case Node::kAtomic:
      return nullable(n.kids[0]);
    case Node::kLook:
    case Node::kAssert:
      return true;
  }
  return true;
}

}  // namespace

long fixed_width(const Node& n) {
  switch (n.kind) {
    case Node::kChar:
    case Node::kSet:
      return 1;
    case Node::kConcat: {
      long total = 0;
      for (const Node& k : n.kids) {
        const long w = fixed_width(k);
        if (w < 0) return -1;
        total += w;
      }
      return total;
    }
    case Node::kAlt: {
      long w = n.kids.empty() ? 0 : fixed_width(n.kids[0]);
      for (const Node& k : n.kids)
        if (fixed_width(k) != w) return -1;
      return w;
    }
    case Node::kRepeat: {
      const long w = fixed_width(n.kids[0]);
      if (w < 0 || n.min != n.max) return -1;
      return w * static_cast<long>(n.min);
    }
    case Node::kAtomic:
      return fixed_width(n.kids[0]);
    case Node::kLook:
    case Node::kAssert:
      return 0;
  }
  return -1;
}

namespace {

class Compiler {
 public:
  explicit Compiler(Program* prog) : prog_(prog) {}

  void emit(const Node& n) {
    switch (n.kind) {
      case Node::kChar:
        add(Op::kChar, n.cp);
        break;
      case Node::kSet:
        add(Op::kSet, n.set);
        break;
      case Node::kConcat:
        for (const Node& k : n.kids) emit(k);
        break;
      case Node::kAlt:
        emit_alt(n);
        break;
      case Node::kRepeat:
        emit_repeat(n);
        break;
      case Node::kAtomic: {
        const uint32_t r = new_reg();
        add(Op::kMark, r);
        emit(n.kids[0]);
        add(Op::kCut, r);
        break;
      }
      case Node::kLook:
        emit_look(n);
        break;
      case Node::kAssert:
        add(Op::kAssert, n.assertion);
        break;
    }
  }

  uint32_t add(Op op, uint32_t x = 0, uint32_t y = 0) {
    if (prog_->insts.size() >= kMaxInsts)
      throw std::invalid_argument("invalid regex: the compiled pattern is too large (over " +
                                  std::to_string(kMaxInsts) + " instructions; reduce counted repetitions)");
    Inst in;
    in.op = op, in.x = x, in.y = y;
    prog_->insts.push_back(in);
    return pc() - 1;
  }

 private:
  uint32_t pc() const { return static_cast<uint32_t>(prog_->insts.size()); }
  uint32_t new_reg() { return prog_->num_regs++; }

  // A kMemo where failing is a property of (pc, position) alone: no path from there reaches the
  // end of the pattern, or of the enclosing atomic group or lookahead (regex.cpp records it only
  // once every path has failed). Not so inside a lookbehind, whose body must end where the
  // lookbehind started (kCheckAt reads a register): no memo point goes there. Inside the body of a
  // guarded loop it depends on the iteration's start when the position still equals it (the
  // guard's exit test), so there the memo point names the innermost guard, to be skipped then.
  void memo_point() {
    if (in_lookbehind_ == 0) add(Op::kMemo, prog_->num_memos++, guards_.empty() ? 0 : guards_.back() + 1);
  }

  // b1|b2|...|bn: split(b1, next); b1; jmp end; next: split(b2, next'); ...; bn; end:
  void emit_alt(const Node& n) {
    std::vector<uint32_t> jumps;
    if (n.kids.size() <= 64) {  // branch: b1; jmp end; b2; jmp end; ...; bn; end:
      const uint32_t table = static_cast<uint32_t>(prog_->branches.size());
      prog_->branches.emplace_back();
      add(Op::kBranch, table);
      for (size_t k = 0; k < n.kids.size(); ++k) {
        prog_->branches[table].targets.push_back(pc());
        emit(n.kids[k]);
        if (k + 1 < n.kids.size()) jumps.push_back(add(Op::kJmp));
      }
      for (uint32_t j : jumps) prog_->insts[j].x = pc();
      return;
    }
    for (size_t k = 0; k + 1 < n.kids.size(); ++k) {
      const uint32_t split = add(Op::kSplit, pc() + 1);
      emit(n.kids[k]);
      jumps.push_back(add(Op::kJmp));
      prog_->insts[split].y = pc();
    }
    emit(n.kids.back());
    for (uint32_t j : jumps) prog_->insts[j].x = pc();
  }

  void emit_repeat(const Node& n) {
    const Node& body = n.kids[0];
    if (body.kind == Node::kChar || body.kind == Node::kSet) {
      // One character per iteration: a single instruction that scans, and keeps one frame for
      // giving characters back instead of one frame per character.
      uint32_t set = body.set;
      if (body.kind == Node::kChar) {
        CharSet s;
        s.add(body.cp);
        s.finalize();
        prog_->sets.push_back(std::move(s));
        set = static_cast<uint32_t>(prog_->sets.size() - 1);
      }
      const uint32_t at = add(Op::kRepeat, set);
      Inst& in = prog_->insts[at];
      in.min = n.min, in.max = n.max, in.mode = n.mode;
      if (n.mode != kPossessive && n.min != n.max && in_lookbehind_ == 0) {
        prog_->insts[at].y = prog_->num_memos + 1;  // the matcher's run cache needs to know
        memo_point();                               // where its frame resumes
      }
      return;
    }
    if (n.mode == kPossessive) {  // X*+ is (?>X*)
      const uint32_t r = new_reg();
      add(Op::kMark, r);
      emit_counted(body, n.min, n.max, true);
      add(Op::kCut, r);
    } else {
      emit_counted(body, n.min, n.max, n.mode == kGreedy);
    }
  }

  // X{min,max}: min copies of X, then either a loop or max - min nested optional copies
  // (?:X(?:X)?)? whose splits all exit to the same end. An optional iteration that matches
  // nothing ends the repetition (Python's and PCRE's rule, and Rust's for loops: `x(?:|a)*` on
  // "xaa" matches "x"); without it a loop whose body can match empty would never end.
  void emit_counted(const Node& body, uint32_t min, uint32_t max, bool greedy) {
    for (uint32_t k = 0; k < min; ++k) emit(body);
    const bool guard = nullable(body);
    std::vector<std::pair<uint32_t, uint32_t>> splits;  // (split, body start)
    std::vector<uint32_t> progress;                     // guards, exiting to the end
    const bool loop = max == kInfinite;
    for (uint32_t k = min; k < max && (!loop || splits.empty()); ++k) {
      const uint32_t head = pc();
      memo_point();
      const uint32_t split = add(Op::kSplit);
      splits.emplace_back(split, pc());
      if (guard) add(Op::kSavePos, new_reg()), guards_.push_back(prog_->num_regs - 1);
      emit(body);
      if (guard) progress.push_back(add(Op::kProgress, guards_.back())), guards_.pop_back();
      if (loop) add(Op::kJmp, head);
    }
    for (auto [split, start] : splits) set_split(split, start, pc(), greedy);
    for (uint32_t g : progress) prog_->insts[g].y = pc();
  }

  void set_split(uint32_t split, uint32_t body, uint32_t exit, bool greedy) {
    prog_->insts[split].x = greedy ? body : exit;
    prog_->insts[split].y = greedy ? exit : body;
  }

  void emit_look(const Node& n) {
    const uint32_t r = new_reg();
    add(Op::kMark, r);
    uint32_t push = 0;
    if (n.negate) push = add(Op::kPush);  // resumed when the body fails: the assertion holds
    if (n.behind) {
      add(Op::kBack, static_cast<uint32_t>(fixed_width(n.kids[0])));  // the parser checked it is fixed
      ++in_lookbehind_;
      emit(n.kids[0]);
      --in_lookbehind_;
      add(Op::kCheckAt, r);
    } else {
      emit(n.kids[0]);
    }
    add(Op::kCut, r);  // the body's own choices are never revisited
    if (n.negate) {
      add(Op::kFail);  // the body matched: the negative assertion fails
      prog_->insts[push].x = pc();
    } else if (!n.behind) {
      add(Op::kRestorePos, r);
    }
  }

  Program* prog_;
  int in_lookbehind_ = 0;         // depth of lookbehind bodies being emitted
  std::vector<uint32_t> guards_;  // registers of the guarded loop bodies being emitted
};

FirstSet all_chars() {
  FirstSet f;
  f.ascii[0] = f.ascii[1] = ~uint64_t{0};
  f.other = f.end = true;
  return f;
}

void merge(FirstSet* into, const FirstSet& f) {
  into->ascii[0] |= f.ascii[0], into->ascii[1] |= f.ascii[1];
  into->other |= f.other, into->end |= f.end;
}

// first[pc]: the characters that can come next on a path from pc that reaches kMatch (or the end
// of a negative lookaround's body), as a least fixed point over the program graph (loops make it
// circular).
void compute_first(Program* prog) {
  const std::vector<Inst>& insts = prog->insts;
  std::vector<FirstSet>& first = prog->first;
  first.assign(insts.size(), FirstSet());
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t pc = insts.size(); pc-- > 0;) {
      const Inst& in = insts[pc];
      FirstSet f;
      switch (in.op) {
        case Op::kChar:
          if (in.x < 128) f.ascii[in.x >> 6] |= uint64_t{1} << (in.x & 63);
          else f.other = true;
          break;
        case Op::kSet:
        case Op::kRepeat: {
          const CharSet& s = prog->sets[in.x];
          f.ascii[0] = s.ascii_word(0), f.ascii[1] = s.ascii_word(1);
          f.other = s.may_hold_non_ascii();
          if (in.op == Op::kRepeat && in.min == 0) merge(&f, first[pc + 1]);
          break;
        }
        case Op::kSplit:
          f = first[in.x];
          merge(&f, first[in.y]);
          break;
        case Op::kJmp:
          f = first[in.x];
          break;
        case Op::kBranch:
          for (uint32_t target : prog->branches[in.x].targets) merge(&f, first[target]);
          break;
        case Op::kPush:
          f = first[in.x];
          merge(&f, first[pc + 1]);
          break;
        case Op::kAssert:  // these neither consume nor move: the next character is the same
        case Op::kMark:
        case Op::kCheckAt:
        case Op::kSavePos:
        case Op::kMemo:
          f = first[pc + 1];
          break;
        case Op::kProgress:
          f = first[pc + 1];
          merge(&f, first[in.y]);
          break;
        case Op::kRestorePos:  // these move the position: anything may come next
        case Op::kBack:
        case Op::kMatch:
        // Pruning must not look past a kCut: a path that fails after it fails for good, while a
        // path pruned before it would let the matcher try the atomic group's other choices.
        case Op::kCut:
        // kFail ends the body of a negative lookaround: reaching it is that body's success, which
        // a branch inside the body must not be pruned from.
        case Op::kFail:
          f = all_chars();
          break;
      }
      FirstSet& cur = first[pc];
      const FirstSet before = cur;
      merge(&cur, f);
      if (cur.ascii[0] != before.ascii[0] || cur.ascii[1] != before.ascii[1] || cur.other != before.other ||
          cur.end != before.end)
        changed = true;
    }
  }
}

// A quantifier right before the end of the pattern never needs to come back: the first try
// matches. It keeps no frame then (greedy becomes possessive, lazy takes its minimum), which saves
// most frame traffic in the tokenizer patterns, whose alternatives end in a quantifier.
void drop_useless_frames(Program* prog) {
  std::vector<Inst>& insts = prog->insts;
  for (Inst& in : insts) {
    if (in.op != Op::kRepeat || in.mode == kPossessive) continue;
    size_t next = static_cast<size_t>(&in - insts.data()) + 1;
    for (size_t hops = 0; hops < 8 && (insts[next].op == Op::kMemo || insts[next].op == Op::kJmp); ++hops)
      next = insts[next].op == Op::kJmp ? insts[next].x : next + 1;
    if (insts[next].op != Op::kMatch) continue;
    if (in.mode == kGreedy) in.mode = kPossessive;
    else in.max = in.min;
  }
}

}  // namespace

Program compile(std::string_view pattern) {
  Program prog;
  const Node root = parse(pattern, &prog.sets);
  Compiler compiler(&prog);
  compiler.emit(root);
  compiler.add(Op::kMatch);
  drop_useless_frames(&prog);
  compute_first(&prog);
  for (Branches& b : prog.branches) {  // the dispatch masks, from the first-sets of the branches
    for (size_t k = 0; k < b.targets.size(); ++k) {
      const FirstSet& f = prog.first[b.targets[k]];
      const uint64_t bit = uint64_t{1} << k;
      for (uint32_t c = 0; c < 128; ++c)
        if ((f.ascii[c >> 6] >> (c & 63)) & 1) b.ascii[c] |= bit;
      if (f.other) b.other |= bit;
      if (f.end) b.end |= bit;
    }
  }
  return prog;
}

}  // namespace fastllm::rx
