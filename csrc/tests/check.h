// The one assertion macro of the C++ unit tests: record the failure and go on, so that a run reports
// every broken check; each main() exits nonzero when g_failures > 0.
#pragma once

#include <cstdio>

inline int g_failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                  \
    }                                                                                \
  } while (0)
