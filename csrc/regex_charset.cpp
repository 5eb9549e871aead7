// Character classes for the regex engine: Unicode properties, \w, case folding, and CharSet.
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "regex_impl.h"
#include "regex_categories.h"
#include "unicode_tables.h"

namespace fastllm::rx {

// ==== Unicode data ====
// Two generated tables, both Unicode 16.0.0: unicode_tables.h (shared with the built-in scanners)
// gives letters, marks, numbers and White_Space in one lookup; regex_categories.h gives the exact
// general category for everything else (\d, \w, \p{P}, ...).

Category category_of(uint32_t cp) {
  if (cp > 0x10FFFF) return kNoCategory;
  // The last run starting at or before cp; the first run starts at U+0000, so there is one.
  const uint32_t* run = std::upper_bound(std::begin(kCategoryRuns), std::end(kCategoryRuns), (cp << 5) | 31u) - 1;
  return static_cast<Category>(*run & 31u);
}

bool is_white_space(uint32_t cp) { return (unicode::flags_of(cp) & unicode::kSpace) != 0; }

bool is_word_char(uint32_t cp) {
  if (cp < 128) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  const uint8_t flags = unicode::flags_of(cp);
  if (flags & (unicode::kLetter | unicode::kMark)) return true;
  const Category c = category_of(cp);
  if (c == kNd || c == kNl || c == kPc) return true;
  // Join_Control, and the symbols (So) that Unicode calls Other_Alphabetic: circled and squared
  // Latin letters. Letters, marks and Nl are Alphabetic by category, so these are all that \w
  // adds to the categories above (checked against the `regex` module's \w over all code points).
  return cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
         (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189);
}

// ==== Case folding ====

namespace {

// Unicode 16.0 simple case folding (CaseFolding.txt, statuses C and S): for cp in lo, lo + stride,
// ..., hi, fold(cp) = cp + delta; code points absent fold to themselves. Made from Perl's
// Unicode::UCD::casefold(cp)->{simple} (Unicode 14) plus the pairs Unicode 15 and 16 added
// (U+1C89, U+A7CB..U+A7DC, Garay U+10D50..U+10D65), grouped by delta into runs. Every orbit was
// checked against the `regex` module's (?i) on all code points; the one difference is U+0131
// (dotless i): Python's (?i)\u0131 also matches I, Rust's (like this table) only itself.
struct FoldRun {
  uint32_t lo, hi, stride;
  int32_t delta;
};
constexpr FoldRun kFoldRuns[] = {
    {0x41, 0x5A, 1, 32}, {0xB5, 0xB5, 1, 775}, {0xC0, 0xD6, 1, 32}, {0xD8, 0xDE, 1, 32}, {0x100, 0x12E, 2, 1},
    {0x132, 0x136, 2, 1}, {0x139, 0x147, 2, 1}, {0x14A, 0x176, 2, 1}, {0x178, 0x178, 1, -121},
    {0x179, 0x17D, 2, 1}, {0x17F, 0x17F, 1, -268}, {0x181, 0x181, 1, 210}, {0x182, 0x184, 2, 1},
    {0x186, 0x186, 1, 206}, {0x187, 0x187, 1, 1}, {0x189, 0x18A, 1, 205}, {0x18B, 0x18B, 1, 1},
    {0x18E, 0x18E, 1, 79}, {0x18F, 0x18F, 1, 202}, {0x190, 0x190, 1, 203}, {0x191, 0x191, 1, 1},
    {0x193, 0x193, 1, 205}, {0x194, 0x194, 1, 207}, {0x196, 0x196, 1, 211}, {0x197, 0x197, 1, 209},
    {0x198, 0x198, 1, 1}, {0x19C, 0x19C, 1, 211}, {0x19D, 0x19D, 1, 213}, {0x19F, 0x19F, 1, 214},
    {0x1A0, 0x1A4, 2, 1}, {0x1A6, 0x1A6, 1, 218}, {0x1A7, 0x1A7, 1, 1}, {0x1A9, 0x1A9, 1, 218},
    {0x1AC, 0x1AC, 1, 1}, {0x1AE, 0x1AE, 1, 218}, {0x1AF, 0x1AF, 1, 1}, {0x1B1, 0x1B2, 1, 217},
    {0x1B3, 0x1B5, 2, 1}, {0x1B7, 0x1B7, 1, 219}, {0x1B8, 0x1B8, 1, 1}, {0x1BC, 0x1BC, 1, 1},
    {0x1C4, 0x1C4, 1, 2}, {0x1C5, 0x1C5, 1, 1}, {0x1C7, 0x1C7, 1, 2}, {0x1C8, 0x1C8, 1, 1},
    {0x1CA, 0x1CA, 1, 2}, {0x1CB, 0x1DB, 2, 1}, {0x1DE, 0x1EE, 2, 1}, {0x1F1, 0x1F1, 1, 2},
    {0x1F2, 0x1F4, 2, 1}, {0x1F6, 0x1F6, 1, -97}, {0x1F7, 0x1F7, 1, -56}, {0x1F8, 0x21E, 2, 1},
    {0x220, 0x220, 1, -130}, {0x222, 0x232, 2, 1}, {0x23A, 0x23A, 1, 10795}, {0x23B, 0x23B, 1, 1},
    {0x23D, 0x23D, 1, -163}, {0x23E, 0x23E, 1, 10792}, {0x241, 0x241, 1, 1}, {0x243, 0x243, 1, -195},
    {0x244, 0x244, 1, 69}, {0x245, 0x245, 1, 71}, {0x246, 0x24E, 2, 1}, {0x345, 0x345, 1, 116},
    {0x370, 0x372, 2, 1}, {0x376, 0x376, 1, 1}, {0x37F, 0x37F, 1, 116}, {0x386, 0x386, 1, 38},
    {0x388, 0x38A, 1, 37}, {0x38C, 0x38C, 1, 64}, {0x38E, 0x38F, 1, 63}, {0x391, 0x3A1, 1, 32},
    {0x3A3, 0x3AB, 1, 32}, {0x3C2, 0x3C2, 1, 1}, {0x3CF, 0x3CF, 1, 8}, {0x3D0, 0x3D0, 1, -30},
    {0x3D1, 0x3D1, 1, -25}, {0x3D5, 0x3D5, 1, -15}, {0x3D6, 0x3D6, 1, -22}, {0x3D8, 0x3EE, 2, 1},
    {0x3F0, 0x3F0, 1, -54}, {0x3F1, 0x3F1, 1, -48}, {0x3F4, 0x3F4, 1, -60}, {0x3F5, 0x3F5, 1, -64},
    {0x3F7, 0x3F7, 1, 1}, {0x3F9, 0x3F9, 1, -7}, {0x3FA, 0x3FA, 1, 1}, {0x3FD, 0x3FF, 1, -130},
    {0x400, 0x40F, 1, 80}, {0x410, 0x42F, 1, 32}, {0x460, 0x480, 2, 1}, {0x48A, 0x4BE, 2, 1},
    {0x4C0, 0x4C0, 1, 15}, {0x4C1, 0x4CD, 2, 1}, {0x4D0, 0x52E, 2, 1}, {0x531, 0x556, 1, 48},
    {0x10A0, 0x10C5, 1, 7264}, {0x10C7, 0x10C7, 1, 7264}, {0x10CD, 0x10CD, 1, 7264}, {0x13F8, 0x13FD, 1, -8},
    {0x1C80, 0x1C80, 1, -6222}, {0x1C81, 0x1C81, 1, -6221}, {0x1C82, 0x1C82, 1, -6212},
    {0x1C83, 0x1C84, 1, -6210}, {0x1C85, 0x1C85, 1, -6211}, {0x1C86, 0x1C86, 1, -6204},
    {0x1C87, 0x1C87, 1, -6180}, {0x1C88, 0x1C88, 1, 35267}, {0x1C89, 0x1C89, 1, 1},
    {0x1C90, 0x1CBA, 1, -3008}, {0x1CBD, 0x1CBF, 1, -3008}, {0x1E00, 0x1E94, 2, 1}, {0x1E9B, 0x1E9B, 1, -58},
    {0x1E9E, 0x1E9E, 1, -7615}, {0x1EA0, 0x1EFE, 2, 1}, {0x1F08, 0x1F0F, 1, -8}, {0x1F18, 0x1F1D, 1, -8},
    {0x1F28, 0x1F2F, 1, -8}, {0x1F38, 0x1F3F, 1, -8}, {0x1F48, 0x1F4D, 1, -8}, {0x1F59, 0x1F5F, 2, -8},
    {0x1F68, 0x1F6F, 1, -8}, {0x1F88, 0x1F8F, 1, -8}, {0x1F98, 0x1F9F, 1, -8}, {0x1FA8, 0x1FAF, 1, -8},
    {0x1FB8, 0x1FB9, 1, -8}, {0x1FBA, 0x1FBB, 1, -74}, {0x1FBC, 0x1FBC, 1, -9}, {0x1FBE, 0x1FBE, 1, -7173},
    {0x1FC8, 0x1FCB, 1, -86}, {0x1FCC, 0x1FCC, 1, -9}, {0x1FD8, 0x1FD9, 1, -8}, {0x1FDA, 0x1FDB, 1, -100},
    {0x1FE8, 0x1FE9, 1, -8}, {0x1FEA, 0x1FEB, 1, -112}, {0x1FEC, 0x1FEC, 1, -7}, {0x1FF8, 0x1FF9, 1, -128},
    {0x1FFA, 0x1FFB, 1, -126}, {0x1FFC, 0x1FFC, 1, -9}, {0x2126, 0x2126, 1, -7517},
    {0x212A, 0x212A, 1, -8383}, {0x212B, 0x212B, 1, -8262}, {0x2132, 0x2132, 1, 28}, {0x2160, 0x216F, 1, 16},
    {0x2183, 0x2183, 1, 1}, {0x24B6, 0x24CF, 1, 26}, {0x2C00, 0x2C2F, 1, 48}, {0x2C60, 0x2C60, 1, 1},
    {0x2C62, 0x2C62, 1, -10743}, {0x2C63, 0x2C63, 1, -3814}, {0x2C64, 0x2C64, 1, -10727},
    {0x2C67, 0x2C6B, 2, 1}, {0x2C6D, 0x2C6D, 1, -10780}, {0x2C6E, 0x2C6E, 1, -10749},
    {0x2C6F, 0x2C6F, 1, -10783}, {0x2C70, 0x2C70, 1, -10782}, {0x2C72, 0x2C72, 1, 1}, {0x2C75, 0x2C75, 1, 1},
    {0x2C7E, 0x2C7F, 1, -10815}, {0x2C80, 0x2CE2, 2, 1}, {0x2CEB, 0x2CED, 2, 1}, {0x2CF2, 0x2CF2, 1, 1},
    {0xA640, 0xA66C, 2, 1}, {0xA680, 0xA69A, 2, 1}, {0xA722, 0xA72E, 2, 1}, {0xA732, 0xA76E, 2, 1},
    {0xA779, 0xA77B, 2, 1}, {0xA77D, 0xA77D, 1, -35332}, {0xA77E, 0xA786, 2, 1}, {0xA78B, 0xA78B, 1, 1},
    {0xA78D, 0xA78D, 1, -42280}, {0xA790, 0xA792, 2, 1}, {0xA796, 0xA7A8, 2, 1}, {0xA7AA, 0xA7AA, 1, -42308},
    {0xA7AB, 0xA7AB, 1, -42319}, {0xA7AC, 0xA7AC, 1, -42315}, {0xA7AD, 0xA7AD, 1, -42305},
    {0xA7AE, 0xA7AE, 1, -42308}, {0xA7B0, 0xA7B0, 1, -42258}, {0xA7B1, 0xA7B1, 1, -42282},
    {0xA7B2, 0xA7B2, 1, -42261}, {0xA7B3, 0xA7B3, 1, 928}, {0xA7B4, 0xA7C2, 2, 1}, {0xA7C4, 0xA7C4, 1, -48},
    {0xA7C5, 0xA7C5, 1, -42307}, {0xA7C6, 0xA7C6, 1, -35384}, {0xA7C7, 0xA7C9, 2, 1},
    {0xA7CB, 0xA7CB, 1, -42343}, {0xA7CC, 0xA7CC, 1, 1}, {0xA7D0, 0xA7D0, 1, 1}, {0xA7D6, 0xA7D8, 2, 1},
    {0xA7DA, 0xA7DA, 1, 1}, {0xA7DC, 0xA7DC, 1, -42561}, {0xA7F5, 0xA7F5, 1, 1}, {0xAB70, 0xABBF, 1, -38864},
    {0xFF21, 0xFF3A, 1, 32}, {0x10400, 0x10427, 1, 40}, {0x104B0, 0x104D3, 1, 40}, {0x10570, 0x1057A, 1, 39},
    {0x1057C, 0x1058A, 1, 39}, {0x1058C, 0x10592, 1, 39}, {0x10594, 0x10595, 1, 39},
    {0x10C80, 0x10CB2, 1, 64}, {0x10D50, 0x10D65, 1, 32}, {0x118A0, 0x118BF, 1, 32},
    {0x16E40, 0x16E5F, 1, 32}, {0x1E900, 0x1E921, 1, 34},
};

// Orbits: code points with the same fold. Built once, at the first (?i) pattern.
struct Orbits {
  std::vector<std::vector<uint32_t>> members;
  std::vector<std::pair<uint32_t, uint32_t>> index;  // (code point, orbit), sorted
  Orbits() {
    std::vector<std::pair<uint32_t, uint32_t>> folds;  // (fold target, code point)
    for (const FoldRun& r : kFoldRuns)
      for (uint32_t cp = r.lo; cp <= r.hi; cp += r.stride) folds.emplace_back(static_cast<uint32_t>(cp + r.delta), cp);
    std::sort(folds.begin(), folds.end());
    for (size_t i = 0; i < folds.size();) {
      std::vector<uint32_t> orbit{folds[i].first};
      size_t j = i;
      for (; j < folds.size() && folds[j].first == folds[i].first; ++j) orbit.push_back(folds[j].second);
      std::sort(orbit.begin(), orbit.end());
      for (uint32_t cp : orbit) index.emplace_back(cp, static_cast<uint32_t>(members.size()));
      members.push_back(std::move(orbit));
      i = j;
    }
    std::sort(index.begin(), index.end());
  }
};

const Orbits& orbits() {
  static const Orbits o;  // thread-safe initialisation (C++11)
  return o;
}

}  // namespace

std::vector<uint32_t> case_orbit(uint32_t cp) {
  const Orbits& o = orbits();
  auto it = std::lower_bound(o.index.begin(), o.index.end(), std::make_pair(cp, uint32_t{0}));
  if (it != o.index.end() && it->first == cp) return o.members[it->second];
  return {cp};
}

// ==== CharSet ====

void CharSet::add_range(uint32_t lo, uint32_t hi) { ranges_.emplace_back(lo, hi); }

// The unicode_tables.h flags that test exactly "in one of these categories, or White_Space if
// asked", or 0 when they cannot (a mask with part of M or N, or with P, S, Z, C categories).
// Every tokenizer pattern's classes (\p{L}, \p{Lu}.., \p{M}, \p{N}, \s) take this one-lookup path.
uint8_t CharSet::flags_for(uint32_t categories, bool white_space) {
  constexpr uint32_t kMarks = (1u << kMn) | (1u << kMc) | (1u << kMe);
  constexpr uint32_t kNumbers = (1u << kNd) | (1u << kNl) | (1u << kNo);
  constexpr uint32_t kLetters = (1u << kLu) | (1u << kLl) | (1u << kLt) | (1u << kLm) | (1u << kLo);
  if (categories & ~(kMarks | kNumbers | kLetters)) return 0;
  if ((categories & kMarks) != 0 && (categories & kMarks) != kMarks) return 0;
  if ((categories & kNumbers) != 0 && (categories & kNumbers) != kNumbers) return 0;
  uint8_t flags = white_space ? unicode::kSpace : 0;
  if (categories & kMarks) flags |= unicode::kMark;
  if (categories & kNumbers) flags |= unicode::kNumber;
  constexpr uint8_t kLetterFlags[5] = {unicode::kLu, unicode::kLl, unicode::kLt, unicode::kLm, unicode::kLo};
  for (int c = kLu; c <= kLo; ++c)
    if (categories & (1u << c)) flags |= kLetterFlags[c];
  return flags;
}

void CharSet::add_complement_of(CharSet set) {
  set.negated_ = !set.negated_;
  set.finalize();
  complements_.push_back(std::move(set));  // stored already complemented: contains() answers
}

void CharSet::add_all(const CharSet& set) {
  if (set.negated_) {
    CharSet copy = set;
    copy.negated_ = false;
    add_complement_of(std::move(copy));
    return;
  }
  ranges_.insert(ranges_.end(), set.ranges_.begin(), set.ranges_.end());
  complements_.insert(complements_.end(), set.complements_.begin(), set.complements_.end());
  categories_ |= set.categories_;
  white_space_ |= set.white_space_;
  word_ |= set.word_;
}

void CharSet::case_fold_closure() {
  finalize();  // contains_slow() needs sorted ranges; it ignores the whole-set negation
  std::vector<uint32_t> extra;
  for (const auto& orbit : orbits().members) {
    if (std::any_of(orbit.begin(), orbit.end(), [this](uint32_t cp) { return contains_slow(cp); }))
      extra.insert(extra.end(), orbit.begin(), orbit.end());
  }
  for (uint32_t cp : extra) add(cp);
  finalize();
}

void CharSet::finalize() {
  std::sort(ranges_.begin(), ranges_.end());
  std::vector<std::pair<uint32_t, uint32_t>> merged;
  for (const auto& r : ranges_) {
    if (!merged.empty() && r.first <= merged.back().second + 1)
      merged.back().second = std::max(merged.back().second, r.second);
    else
      merged.push_back(r);
  }
  ranges_ = std::move(merged);
  fast_flags_ = flags_for(categories_, white_space_);
  ascii_[0] = ascii_[1] = 0;
  for (uint32_t cp = 0; cp < 128; ++cp)
    if (contains_slow(cp) != negated_) ascii_[cp >> 6] |= uint64_t{1} << (cp & 63);
}

bool CharSet::contains_slow(uint32_t cp) const {
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), std::make_pair(cp, UINT32_MAX));
  if (it != ranges_.begin() && std::prev(it)->second >= cp) return true;
  if (fast_flags_ != 0) {
    if (unicode::flags_of(cp) & fast_flags_) return true;
  } else {
    if (categories_ != 0 && ((categories_ >> category_of(cp)) & 1)) return true;
    if (white_space_ && is_white_space(cp)) return true;
  }
  if (word_ && is_word_char(cp)) return true;
  for (const CharSet& c : complements_)
    if (c.contains(cp)) return true;
  return false;
}

bool CharSet::may_hold_non_ascii() const {
  return negated_ || categories_ != 0 || white_space_ || word_ || !complements_.empty() ||
         (!ranges_.empty() && ranges_.back().second >= 128);
}

// ==== Property names ====

namespace {

// Loose matching (UAX #44 LM3): ignore case, spaces, '_' and '-'.
std::string loose(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == ' ' || c == '_' || c == '-') continue;
    out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  }
  return out;
}

constexpr uint32_t bit(Category c) { return 1u << c; }
constexpr uint32_t kL = bit(kLu) | bit(kLl) | bit(kLt) | bit(kLm) | bit(kLo);
constexpr uint32_t kM = bit(kMn) | bit(kMc) | bit(kMe);
constexpr uint32_t kN = bit(kNd) | bit(kNl) | bit(kNo);
constexpr uint32_t kP = bit(kPc) | bit(kPd) | bit(kPs) | bit(kPe) | bit(kPi) | bit(kPf) | bit(kPo);
constexpr uint32_t kS = bit(kSm) | bit(kSc) | bit(kSk) | bit(kSo);
constexpr uint32_t kZ = bit(kZs) | bit(kZl) | bit(kZp);
constexpr uint32_t kC = bit(kCc) | bit(kCf) | bit(kCs) | bit(kCo) | bit(kCn);

struct CategoryName {
  const char* names;  // loose aliases separated by '|'
  uint32_t mask;
};
constexpr CategoryName kCategoryNames[] = {
    {"l|letter", kL}, {"lc|l&|casedletter", bit(kLu) | bit(kLl) | bit(kLt)},
    {"lu|uppercaseletter", bit(kLu)}, {"ll|lowercaseletter", bit(kLl)}, {"lt|titlecaseletter", bit(kLt)},
    {"lm|modifierletter", bit(kLm)}, {"lo|otherletter", bit(kLo)},
    {"m|mark|combiningmark", kM}, {"mn|nonspacingmark", bit(kMn)}, {"mc|spacingmark", bit(kMc)},
    {"me|enclosingmark", bit(kMe)},
    {"n|number", kN}, {"nd|decimalnumber|digit", bit(kNd)}, {"nl|letternumber", bit(kNl)},
    {"no|othernumber", bit(kNo)},
    {"p|punctuation|punct", kP}, {"pc|connectorpunctuation", bit(kPc)}, {"pd|dashpunctuation", bit(kPd)},
    {"ps|openpunctuation", bit(kPs)}, {"pe|closepunctuation", bit(kPe)}, {"pi|initialpunctuation", bit(kPi)},
    {"pf|finalpunctuation", bit(kPf)}, {"po|otherpunctuation", bit(kPo)},
    {"s|symbol", kS}, {"sm|mathsymbol", bit(kSm)}, {"sc|currencysymbol", bit(kSc)},
    {"sk|modifiersymbol", bit(kSk)}, {"so|othersymbol", bit(kSo)},
    {"z|separator", kZ}, {"zs|spaceseparator", bit(kZs)}, {"zl|lineseparator", bit(kZl)},
    {"zp|paragraphseparator", bit(kZp)},
    {"c|other", kC}, {"cc|control|cntrl", bit(kCc)}, {"cf|format", bit(kCf)}, {"cs|surrogate", bit(kCs)},
    {"co|privateuse", bit(kCo)}, {"cn|unassigned", bit(kCn)},
};

bool alias_matches(const char* names, const std::string& key) {
  std::string_view all(names);
  while (!all.empty()) {
    const size_t bar = all.find('|');
    if (all.substr(0, bar) == key) return true;
    if (bar == std::string_view::npos) break;
    all.remove_prefix(bar + 1);
  }
  return false;
}

}  // namespace

bool property_set(std::string_view name, CharSet* out) {
  std::string key = loose(name);
  for (const char* prefix : {"gc=", "gc:", "generalcategory=", "generalcategory:"}) {
    const std::string p(prefix);
    if (key.compare(0, p.size(), p) == 0) {
      key.erase(0, p.size());
      break;
    }
  }
  for (const CategoryName& c : kCategoryNames) {
    if (alias_matches(c.names, key)) {
      out->add_categories(c.mask);
      return true;
    }
  }
  if (key == "any") {
    out->add_range(0, 0x10FFFF);
  } else if (key == "ascii") {
    out->add_range(0, 0x7F);
  } else if (key == "whitespace" || key == "wspace" || key == "space") {
    out->add_white_space();
  } else {
    return false;
  }
  return true;
}

}  // namespace fastllm::rx
