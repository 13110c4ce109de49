#include "rankone/models/numpy_random.h"

#include <cmath>

namespace rankone {

namespace {
constexpr int kStateSize = 624;
constexpr int kShift = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfU;
constexpr uint32_t kUpperMask = 0x80000000U;
constexpr uint32_t kLowerMask = 0x7fffffffU;
}  // namespace

NumpyRandomState::NumpyRandomState(uint32_t seed) {
  mt_[0] = seed;
  for (int i = 1; i < kStateSize; ++i) {
    mt_[i] = 1812433253U * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  }
  position_ = kStateSize;
}

void NumpyRandomState::twist() {
  for (int i = 0; i < kStateSize; ++i) {
    uint32_t y = (mt_[i] & kUpperMask) | (mt_[(i + 1) % kStateSize] & kLowerMask);
    mt_[i] = mt_[(i + kShift) % kStateSize] ^ (y >> 1) ^ ((y & 1U) ? kMatrixA : 0U);
  }
  position_ = 0;
}

uint32_t NumpyRandomState::next_uint32() {
  if (position_ >= kStateSize) twist();
  uint32_t y = mt_[position_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  y ^= (y >> 18);
  return y;
}

double NumpyRandomState::random_sample() {
  // 27 + 26 bits, as numpy's legacy random_sample.
  uint32_t a = next_uint32() >> 5;
  uint32_t b = next_uint32() >> 6;
  return (a * 67108864.0 + b) / 9007199254740992.0;
}

double NumpyRandomState::standard_normal() {
  if (has_cached_gauss_) {
    has_cached_gauss_ = false;
    return cached_gauss_;
  }
  double x1, x2, r2;
  do {
    x1 = 2.0 * random_sample() - 1.0;
    x2 = 2.0 * random_sample() - 1.0;
    r2 = x1 * x1 + x2 * x2;
  } while (r2 >= 1.0 || r2 == 0.0);
  double f = std::sqrt(-2.0 * std::log(r2) / r2);
  cached_gauss_ = f * x1;
  has_cached_gauss_ = true;
  return f * x2;
}

std::vector<float> NumpyRandomState::standard_normal_f32(int64_t count) {
  std::vector<float> out(static_cast<size_t>(count));
  for (auto& value : out) value = static_cast<float>(standard_normal());
  return out;
}

std::vector<float> NumpyRandomState::uniform_f32(int64_t count, double low, double high) {
  std::vector<float> out(static_cast<size_t>(count));
  for (auto& value : out) value = static_cast<float>(low + (high - low) * random_sample());
  return out;
}

}  // namespace rankone
