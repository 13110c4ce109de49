#include "rankone/formats/tensor_file.h"
#include "rankone/rewriting/masks.h"
#include "rankone/rewriting/request.h"
#include "test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

namespace rankone {
namespace {

TEST(Masks, DecodeLikeReferenceBitExact) {
  RANKONE_REQUIRE_FIXTURE(dir, "stylegan2-tiny");
  TensorFile edit = load_tensor_file(dir + "/edit_layer6.safetensors");
  Request request = load_request(dir + "/request_layer6.json");
  ASSERT_TRUE(request.object.has_value());
  ASSERT_EQ(request.keys.size(), 3u);
  EXPECT_EQ(request.object->image, 1);
  EXPECT_EQ(request.paste.image, 2);

  EXPECT_TRUE(resize_mask(request.object->mask, 16, 16).equal(edit.get("mask.object")));
  EXPECT_TRUE(resize_mask(request.paste.mask, 16, 16).equal(edit.get("mask.paste")));
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("key " + std::to_string(i));
    at::Tensor expected = edit.get("mask.key" + std::to_string(i));
    at::Tensor actual = resize_mask(request.keys[i].mask, 16, 16);
    EXPECT_TRUE(actual.equal(expected)) << "max diff " << (actual - expected).abs().max().item<float>();
  }
}

TEST(Masks, RoundTripDataUrl) {
  at::Tensor mask = at::zeros({20, 30}, at::kByte);
  mask.slice(0, 5, 10).slice(1, 3, 12).fill_(255);
  at::Tensor decoded = decode_mask_url(encode_mask_url(mask), "test");
  EXPECT_TRUE(decoded.equal(mask));
  Box box = mask_bounds(decoded.to(at::kFloat));
  EXPECT_EQ(box.top, 5);
  EXPECT_EQ(box.bottom, 10);
  EXPECT_EQ(box.left, 3);
  EXPECT_EQ(box.right, 12);
}

TEST(Masks, UpscaleKeepsOnes) {
  at::Tensor mask = at::full({4, 4}, 255, at::kByte);
  EXPECT_TRUE(resize_mask(mask, 16, 16).eq(1.0).all().item<bool>());
}

TEST(Masks, BrokenDataUrlsRejected) {
  struct Case {
    std::string url;
    const char* message;
  };
  for (const Case& c : {Case{"http://example.invalid/x.png", "must be a data URL"},
                        Case{"data:image/png;base64,!!!!", "invalid base64"},
                        Case{"data:image/png;base64,aGVsbG8=", "not a PNG"},
                        Case{"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA", "PNG"}}) {
    SCOPED_TRACE(c.url);
    try {
      decode_mask_url(c.url, "key[0]");
      ADD_FAILURE() << "expected an error";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("key[0]"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace rankone
