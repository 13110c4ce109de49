// stb_image compiled here, PNG only and private to this file, with allocation hooks. The
// shared libstb that the rest of rankone links grows its inflate buffer without a limit, so a
// few hundred bytes of hostile PNG could make it allocate gigabytes.
#include "formats/png_decoder.h"

#include <cstdlib>

namespace {

void* bounded_malloc(size_t size) {
  return size > rankone::formats::kMaxPngAllocation ? nullptr : std::malloc(size);
}

void* bounded_realloc(void* pointer, size_t size) {
  return size > rankone::formats::kMaxPngAllocation ? nullptr : std::realloc(pointer, size);
}

}  // namespace

#define STBI_MALLOC(size) bounded_malloc(size)
#define STBI_REALLOC(pointer, size) bounded_realloc(pointer, size)
#define STBI_FREE(pointer) std::free(pointer)
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

namespace rankone::formats {

bool decode_png_bounded(const std::string& bytes, DecodedPng& out, std::string& failure) {
  int width = 0, height = 0, channels = 0;
  stbi_uc* pixels = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                          static_cast<int>(bytes.size()), &width, &height, &channels, 4);
  if (!pixels) {
    failure = stbi_failure_reason() ? stbi_failure_reason() : "unknown error";
    return false;
  }
  out.width = width;
  out.height = height;
  out.rgba.assign(pixels, pixels + size_t(width) * height * 4);
  stbi_image_free(pixels);
  return true;
}

}  // namespace rankone::formats
