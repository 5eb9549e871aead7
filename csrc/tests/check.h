// The one assertion macro of the C++ unit tests: record the failure and go on, so that a run reports
// every broken check; each main() exits nonzero when g_failures > 0.
#pragma once

#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>

inline int g_failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                  \
    }                                                                                \
  } while (0)

// True when fn throws std::invalid_argument (BpeError) whose message contains needle; prints any other message.
inline bool throws(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return true;
    std::fprintf(stderr, "  message was: %s\n", e.what());
    return false;
  }
  return false;
}
