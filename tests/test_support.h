// Helpers shared by the unit tests: where the reference fixtures and test data live.
#pragma once

#include "rankone/models/stylegan2.h"

#include <string>

namespace rankone::testing {

/// Folder of the numerical reference fixtures: $RANKONE_FIXTURES, else ../shared/fixtures
/// beside the source tree. Empty when neither exists (tests then skip, not pass).
std::string fixtures_dir();
/// tests/data in the source tree.
std::string test_data_dir();
/// A fresh empty temporary folder, removed at process exit.
std::string temp_dir();
/// A 32x32 StyleGAN2 small enough for unit tests: style size 16, 2 mapping layers, 16 channels
/// up to 8x8, then 12 and 8, with noise buffers.
StyleGAN2Config small_stylegan2_config();

}  // namespace rankone::testing

/// Skips the current test when the fixture folder `sub` (e.g. "stylegan2-tiny") is missing.
#define RANKONE_REQUIRE_FIXTURE(path_variable, sub)                                  \
  std::string path_variable = ::rankone::testing::fixtures_dir();                    \
  if (path_variable.empty()) GTEST_SKIP() << "reference fixtures not found (set RANKONE_FIXTURES)"; \
  path_variable += "/" sub
