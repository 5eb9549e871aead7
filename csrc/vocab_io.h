// What the vocabulary readers share (vocab_io.cpp: tiktoken rank files and GPT-2's encoder.json +
// vocab.bpe; tokenizer_json.cpp: Hugging Face tokenizer.json): GPT-2's byte-level alphabet, UTF-8
// output and whole-file reads.
#pragma once

#include <cstdint>
#include <string>

namespace fastllm {

// GPT-2's printable stand-ins: bytes that are printable Latin-1 map to themselves, the other 68
// (controls, space, DEL, NBSP, soft hyphen) to U+0100.. in byte order.
struct ByteAlphabet {
  uint32_t to_cp[256] = {};
  int16_t from_cp[512] = {};
  constexpr ByteAlphabet() {
    for (auto& b : from_cp) b = -1;
    uint32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : extra++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
inline constexpr ByteAlphabet kAlphabet{};

void append_utf8(uint32_t cp, std::string& out);
// The whole file; BpeError "<path>: cannot open the file" (or "cannot read").
std::string read_file(const std::string& path);

}  // namespace fastllm
