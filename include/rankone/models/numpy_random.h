// A bit-exact port of numpy's legacy RandomState (MT19937 with the polar
// Box-Muller Gaussian), so that latents and noise match numpy and the
// reference rewriting tool number for number.
#pragma once

#include <cstdint>
#include <vector>

namespace rankone {

class NumpyRandomState {
 public:
  /// Seeds like `numpy.random.RandomState(seed)` with an integer seed (init_genrand).
  explicit NumpyRandomState(uint32_t seed);

  /// Next raw 32-bit MT19937 output.
  uint32_t next_uint32();
  /// Uniform double in [0, 1) with 53 random bits, as `random_sample`.
  double random_sample();
  /// Standard normal, as `standard_normal` and `randn` (legacy polar method with a cached value).
  double standard_normal();

  /// Fills `count` standard normals cast to float32 (round to nearest), as `.astype('float32')`.
  std::vector<float> standard_normal_f32(int64_t count);
  /// Fills `count` uniforms in [low, high) cast to float32, as `uniform(low, high, count)`.
  std::vector<float> uniform_f32(int64_t count, double low, double high);

  /// The 624-word state after seeding or the last twist.
  const uint32_t* state() const { return mt_; }

 private:
  void twist();

  uint32_t mt_[624];
  int position_ = 624;
  bool has_cached_gauss_ = false;
  double cached_gauss_ = 0.0;
};

}  // namespace rankone
