// The studio server's guards, run against the real server on 127.0.0.1 (port 0)
// with a tiny random sequential generator written by the test.
#include "rankone/serving/studio_server.h"

#include "rankone/error.h"
#include "rankone/formats/tensor_file.h"
#include "rankone/rewriting/masks.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

namespace rankone {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSecret = "secret-outside-the-web-folder";

// Writes an 8x8 generator (latent 8 -> 4x4 -> 4x4 -> 8x8) with seeded random weights and its card.
std::string write_tiny_model(const std::string& folder) {
  at::manual_seed(7);
  save_safetensors(folder + "/tiny.safetensors",
                   {{"block0.weight", at::randn({8, 16, 4, 4}) * 0.3},
                    {"block1.weight", at::randn({16, 16, 3, 3}) * 0.2},
                    {"block2.weight", at::randn({16, 3, 4, 4}) * 0.2},
                    {"block2.bias", at::zeros({3})}});
  json card = {
      {"name", "tiny"},
      {"architecture", "sequential"},
      {"weights", "tiny.safetensors"},
      {"latent", {{"size", 8}, {"distribution", "normal"}}},
      {"default_layer", 1},
      {"blocks",
       {{{"conv", {{"type", "conv_transpose"}, {"weight", "block0.weight"}, {"bias", nullptr}, {"in", 8},
                   {"out", 16}, {"kernel", 4}, {"stride", 1}, {"padding", 0}}},
         {"activation", {{"type", "leaky_relu"}, {"slope", 0.2}}}},
        {{"conv", {{"type", "conv"}, {"weight", "block1.weight"}, {"bias", nullptr}, {"in", 16}, {"out", 16},
                   {"kernel", 3}, {"stride", 1}, {"padding", 1}}},
         {"activation", {{"type", "leaky_relu"}, {"slope", 0.2}}}},
        {{"conv", {{"type", "conv_transpose"}, {"weight", "block2.weight"}, {"bias", "block2.bias"}, {"in", 16},
                   {"out", 3}, {"kernel", 4}, {"stride", 2}, {"padding", 1}}},
         {"activation", {{"type", "tanh"}}}}}}};
  std::string path = folder + "/tiny.json";
  std::ofstream(path) << card.dump(2);
  return path;
}

// A 64x64 mask with the square [top, top + side) x [left, left + side) painted.
std::string square_mask(int64_t top, int64_t left, int64_t side) {
  at::Tensor mask = at::zeros({64, 64}, at::kByte);
  mask.slice(0, top, top + side).slice(1, left, left + side).fill_(255);
  return encode_mask_url(mask);
}

json copy_request(const std::string& solver, int steps) {
  return {{"object", {0, square_mask(16, 16, 32)}},
          {"paste", {1, square_mask(16, 16, 32)}},
          {"key", json::array({json::array({1, square_mask(16, 16, 32)})})},
          {"layer", 1},
          {"rank", 1},
          {"solver", solver},
          {"steps", steps}};
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class StudioServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::temp_dir();
    fs::create_directories(root_ + "/web/sub");
    std::ofstream(root_ + "/web/index.html") << "<!DOCTYPE html><title>studio</title>";
    std::ofstream(root_ + "/web/sub/page.css") << "body {}";
    std::ofstream(root_ + "/secret.txt") << kSecret;
    fs::create_symlink(root_ + "/secret.txt", root_ + "/web/link.html");

    options_.port = 0;
    options_.data_dir = root_ + "/data";
    options_.web_dir = root_ + "/web";
    options_.cache_dir = "";
    options_.statistics.samples = 40;
    options_.precompute_statistics = false;
  }

  void TearDown() override { stop_server(); }

  void start_server() {
    server_ = std::make_unique<StudioServer>(write_tiny_model(root_), options_);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->listen(); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
    client_->set_read_timeout(30, 0);
  }

  void stop_server() {
    if (!server_) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  httplib::Result post_json(const std::string& path, const json& body) {
    return client_->Post(path.c_str(), body.dump(), "application/json");
  }

  // Polls the job status until no job runs; fails the test after 60 s.
  json wait_for_idle() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      auto res = client_->Get("/api/edit/status");
      if (res && res->status == 200) {
        json status = json::parse(res->body);
        if (status["state"] != "running") return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "the job did not finish within 60 s";
    return json();
  }

  // Checks that `res` is an error response with `status` and the JSON error shape.
  static void expect_error(const httplib::Result& res, int status) {
    ASSERT_TRUE(res) << "no response: " << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    json body = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << res->body;
    ASSERT_TRUE(body.contains("error")) << res->body;
    EXPECT_TRUE(body["error"].is_string()) << res->body;
    ASSERT_TRUE(body.contains("id")) << res->body;
    ASSERT_TRUE(body["id"].is_string()) << res->body;
    EXPECT_FALSE(body["id"].get<std::string>().empty()) << res->body;
  }

  std::string root_;
  StudioOptions options_;
  std::unique_ptr<StudioServer> server_;
  std::thread thread_;
  int port_ = 0;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(StudioServerTest, ServesPageAndModel) {
  start_server();
  auto page = client_->Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("<title>studio</title>"), std::string::npos);
  EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");

  auto model = client_->Get("/api/model");
  ASSERT_TRUE(model);
  ASSERT_EQ(model->status, 200);
  json info = json::parse(model->body);
  EXPECT_EQ(info["image_size"], 8);
  EXPECT_EQ(info["default_layer"], 1);
  EXPECT_EQ(info["layers"].size(), 2u);
  EXPECT_EQ(info["revision"], 0);

  auto sample = client_->Get("/api/samples/3.png?scale=4");
  ASSERT_TRUE(sample);
  EXPECT_EQ(sample->status, 200);
  EXPECT_EQ(sample->get_header_value("Content-Type"), "image/png");
  EXPECT_EQ(sample->body.compare(0, 8, "\x89PNG\r\n\x1a\n"), 0);
}

TEST_F(StudioServerTest, OversizedBodyIs413) {
  options_.max_body_bytes = 1024;
  start_server();
  std::string body = "{\"padding\": \"" + std::string(3000, 'x') + "\"}";
  auto res = client_->Post("/api/edit", body, "application/json");
  expect_error(res, 413);

  // A body just under the limit reaches the handler (which rejects it as a request).
  std::string small = "{\"padding\": \"" + std::string(900, 'x') + "\"}";
  expect_error(client_->Post("/api/edit", small, "application/json"), 400);
}

TEST_F(StudioServerTest, TraversalIsRejected) {
  start_server();
  const std::vector<std::string> paths = {"/../secret.txt",         "/%2e%2e/secret.txt",
                                          "/%2E%2E%2Fsecret.txt",   "/..%2fsecret.txt",
                                          "/sub/../../secret.txt",  "/%252e%252e/secret.txt",
                                          "/sub/%2e%2e/%2e%2e/secret.txt", "/link.html",
                                          "/.%2e/secret.txt",       "/..\\secret.txt"};
  for (const std::string& path : paths) {
    SCOPED_TRACE(path);
    auto res = client_->Get(path.c_str());
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_TRUE(res->status == 403 || res->status == 404) << res->status;
    EXPECT_EQ(res->body.find(kSecret), std::string::npos);
  }

  // Files inside the web folder are still served.
  auto css = client_->Get("/sub/page.css");
  ASSERT_TRUE(css);
  EXPECT_EQ(css->status, 200);
  EXPECT_EQ(css->get_header_value("Content-Type"), "text/css; charset=utf-8");
}

TEST_F(StudioServerTest, MalformedJsonIs400) {
  start_server();
  expect_error(client_->Post("/api/edit", "{\"object\": [0,", "application/json"), 400);
  expect_error(client_->Post("/api/context", "{bad", "application/json"), 400);
  expect_error(client_->Post("/api/search", "[", "application/json"), 400);
  expect_error(client_->Put("/api/requests/broken", "{\"paste\": ", "application/json"), 400);

  // Valid JSON that is not a valid request.
  expect_error(post_json("/api/edit", json::object()), 400);
  json bad_mask = copy_request("direct", 10);
  bad_mask["paste"] = {1, "data:image/png;base64,AAAA"};
  expect_error(post_json("/api/edit", bad_mask), 400);
  json bad_layer = copy_request("direct", 10);
  bad_layer["layer"] = 9;
  expect_error(post_json("/api/edit", bad_layer), 400);
  expect_error(client_->Get("/api/samples/1.png?scale=lots"), 400);
  json wrong_type = {{"key", json::array({json::array({0, square_mask(0, 0, 32)})})}, {"scale", "big"}};
  expect_error(post_json("/api/context", wrong_type), 400);

  // A body that is not declared as JSON is rejected before it is parsed.
  expect_error(client_->Post("/api/edit", "{}", "text/plain"), 415);
}

TEST_F(StudioServerTest, UnknownIdsAre404) {
  start_server();
  expect_error(client_->Get("/api/samples/100000.png"), 404);
  expect_error(client_->Get("/api/samples/999999999999.png"), 404);
  expect_error(client_->Get("/api/requests/never-saved"), 404);
  expect_error(client_->Get("/api/patch"), 404);
  expect_error(client_->Get("/api/no-such-route"), 404);
  expect_error(client_->Get("/missing.js"), 404);

  json request = copy_request("direct", 10);
  request["paste"][0] = 100000;
  expect_error(post_json("/api/edit", request), 404);
}

TEST_F(StudioServerTest, SecondEditIs409) {
  start_server();
  auto first = post_json("/api/edit", copy_request("adam", 1000000));
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, 202) << first->body;
  std::string id = json::parse(first->body)["id"];

  expect_error(post_json("/api/edit", copy_request("direct", 10)), 409);
  expect_error(client_->Post("/api/undo", "", "application/json"), 409);
  expect_error(client_->Post("/api/revert", "", "application/json"), 409);

  // Images are still served while the edit runs.
  auto started = std::chrono::steady_clock::now();
  auto sample = client_->Get("/api/samples/2.png?edited=1");
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_TRUE(sample);
  EXPECT_EQ(sample->status, 200);
  EXPECT_LT(seconds, 5.0);

  auto status = json::parse(client_->Get("/api/edit/status")->body);
  EXPECT_EQ(status["id"], id);
  EXPECT_EQ(status["state"], "running");

  auto cancel = client_->Post("/api/edit/cancel", "", "application/json");
  ASSERT_TRUE(cancel);
  EXPECT_EQ(cancel->status, 200);
  json final_status = wait_for_idle();
  EXPECT_EQ(final_status["state"], "cancelled");
  EXPECT_EQ(final_status["revision"], 0);
}

TEST_F(StudioServerTest, EditChangesSamplesAndUndoRestores) {
  start_server();
  auto original = client_->Get("/api/samples/1.png?edited=0");
  ASSERT_TRUE(original);

  auto started = post_json("/api/edit", copy_request("direct", 10));
  ASSERT_TRUE(started);
  ASSERT_EQ(started->status, 202) << started->body;
  json status = wait_for_idle();
  ASSERT_EQ(status["state"], "done") << status.dump();
  EXPECT_EQ(status["revision"], 1);
  EXPECT_LT(status["result"]["goal_loss_final"].get<double>(), status["result"]["goal_loss_initial"].get<double>());

  auto edited = client_->Get("/api/samples/1.png?edited=1");
  ASSERT_TRUE(edited);
  EXPECT_NE(edited->body, original->body);
  auto unchanged = client_->Get("/api/samples/1.png?edited=0");
  EXPECT_EQ(unchanged->body, original->body);

  auto patch = client_->Get("/api/patch");
  ASSERT_TRUE(patch);
  EXPECT_EQ(patch->status, 200);
  TensorFile patch_file = parse_safetensors(patch->body, "downloaded patch");
  EXPECT_TRUE(patch_file.contains("d"));
  EXPECT_TRUE(patch_file.contains("lambda"));

  auto undo = client_->Post("/api/undo", "", "application/json");
  ASSERT_TRUE(undo);
  json undone = json::parse(undo->body);
  EXPECT_EQ(undone["undone"], true);
  EXPECT_EQ(undone["revision"], 2);
  EXPECT_EQ(client_->Get("/api/samples/1.png?edited=1")->body, original->body);
}

TEST_F(StudioServerTest, ContextMatchesAndSearch) {
  start_server();
  json query = {{"key", json::array({json::array({4, square_mask(0, 0, 32)})})}, {"layer", 1}, {"rank", 1}};

  json context = query;
  context["samples"] = "0-3";
  context["scale"] = 2;
  auto res = post_json("/api/context", context);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json images = json::parse(res->body)["images"];
  ASSERT_EQ(images.size(), 4u);
  EXPECT_EQ(images[0]["png"].get<std::string>().rfind("data:image/png;base64,", 0), 0u);

  json search = query;
  search["samples"] = "0-99";
  search["top"] = 5;
  auto found = post_json("/api/search", search);
  ASSERT_TRUE(found);
  ASSERT_EQ(found->status, 200) << found->body;
  json results = json::parse(found->body)["results"];
  ASSERT_EQ(results.size(), 5u);
  for (size_t i = 1; i < results.size(); ++i) {
    EXPECT_GE(results[i - 1]["score"].get<double>(), results[i]["score"].get<double>());
  }
  // The painted sample's best pixel responds at least as strongly as its painted keys on average.
  EXPECT_GE(results[0]["score"].get<double>(), 1.0 - 1e-6);

  json empty = {{"key", json::array()}};
  expect_error(post_json("/api/context", empty), 400);
}

TEST_F(StudioServerTest, SaveIsAtomic) {
  start_server();
  fs::path folder = fs::path(options_.data_dir) / "requests";
  json request = copy_request("direct", 10);

  auto saved = client_->Put("/api/requests/first-try_1", request.dump(), "application/json");
  ASSERT_TRUE(saved);
  ASSERT_EQ(saved->status, 200) << saved->body;
  fs::path file = folder / "first-try_1.json";
  ASSERT_TRUE(fs::is_regular_file(file));
  std::string before = read_text(file);
  json written = json::parse(before);
  EXPECT_EQ(written["object"], request["object"]);
  EXPECT_EQ(written["paste"], request["paste"]);
  EXPECT_EQ(written["layer"], 1);

  // A rejected save leaves the saved file as it was and no temporary file behind.
  json invalid = request;
  invalid.erase("paste");
  expect_error(client_->Put("/api/requests/first-try_1", invalid.dump(), "application/json"), 400);
  EXPECT_EQ(read_text(file), before);
  for (const fs::directory_entry& entry : fs::directory_iterator(folder)) {
    EXPECT_EQ(entry.path().filename(), "first-try_1.json") << "unexpected file " << entry.path();
  }

  auto loaded = client_->Get("/api/requests/first-try_1");
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->status, 200);
  EXPECT_EQ(loaded->body, before);
  auto list = client_->Get("/api/requests");
  ASSERT_TRUE(list);
  EXPECT_EQ(json::parse(list->body)["requests"], json::array({"first-try_1"}));

  expect_error(client_->Put("/api/requests/bad.name", request.dump(), "application/json"), 400);
  expect_error(client_->Put(("/api/requests/" + std::string(65, 'a')).c_str(), request.dump(), "application/json"),
               400);
}

TEST_F(StudioServerTest, BusyPortIsAnError) {
  start_server();
  StudioOptions second = options_;
  second.port = port_;
  second.data_dir = root_ + "/data2";
  StudioServer other(root_ + "/tiny.json", second);
  try {
    other.bind();
    FAIL() << "a second server bound port " << port_;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot listen on 127.0.0.1:" + std::to_string(port_)), std::string::npos)
        << e.what();
  }
}

TEST_F(StudioServerTest, UndoDuringImageRequests) {
  start_server();
  auto original = client_->Get("/api/samples/1.png?edited=0");
  ASSERT_TRUE(original);

  // Four clients read the edited model while edits are applied, undone and reverted. Each
  // image must come whole from the weights before or after a change.
  // NOTE: without a thread sanitizer, a missing lock shows up here only when the race
  // corrupts an image, fails a request or crashes the server.
  std::atomic<bool> done{false};
  std::vector<std::set<std::string>> seen(4);
  std::vector<int> failed(4, 0);
  std::vector<std::thread> readers;
  for (int r = 0; r < 4; ++r) {
    readers.emplace_back([&, r] {
      httplib::Client reader("127.0.0.1", port_);
      reader.set_read_timeout(30, 0);
      while (!done) {
        auto res = reader.Get("/api/samples/1.png?edited=1");
        if (res && res->status == 200) {
          seen[r].insert(res->body);
        } else {
          ++failed[r];
        }
      }
    });
  }

  std::set<std::string> expected = {original->body};
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto started = post_json("/api/edit", copy_request("direct", 10));
    ASSERT_TRUE(started);
    ASSERT_EQ(started->status, 202) << started->body;
    ASSERT_EQ(wait_for_idle()["state"], "done");
    auto edited = client_->Get("/api/samples/1.png?edited=1");
    ASSERT_TRUE(edited);
    expected.insert(edited->body);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));

    auto restored = client_->Post(round % 2 == 0 ? "/api/undo" : "/api/revert", "", "application/json");
    ASSERT_TRUE(restored);
    EXPECT_EQ(restored->status, 200) << restored->body;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  done = true;
  for (std::thread& reader : readers) reader.join();

  for (int r = 0; r < 4; ++r) {
    SCOPED_TRACE("reader " + std::to_string(r));
    EXPECT_EQ(failed[r], 0) << "image requests failed";
    for (const std::string& body : seen[r]) {
      EXPECT_EQ(expected.count(body), 1u) << "an image matched neither the original nor an applied edit";
    }
  }
  EXPECT_EQ(client_->Get("/api/samples/1.png?edited=1")->body, original->body);
}

TEST_F(StudioServerTest, StopBeforeListenEndsListen) {
  server_ = std::make_unique<StudioServer>(write_tiny_model(root_), options_);
  server_->bind();

  // A signal handler may stop the server before its thread reaches listen().
  server_->stop();
  auto listening = std::async(std::launch::async, [this] { server_->listen(); });
  bool returned = listening.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  if (!returned) server_->stop();
  EXPECT_TRUE(returned) << "listen() kept serving after an earlier stop()";
}

TEST_F(StudioServerTest, BacklogQueuesConnectionBursts) {
  server_ = std::make_unique<StudioServer>(write_tiny_model(root_), options_);
  port_ = server_->bind();

  // Before listen() runs, no connection is accepted, so the kernel queues each handshake in the
  // listen backlog or drops it. A page opens up to a few dozen connections at once.
  constexpr int kConnections = 32;
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port_));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<pollfd> sockets;
  for (int i = 0; i < kConnections; ++i) {
    int socket_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(socket_fd, 0);
    ::connect(socket_fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    sockets.push_back({socket_fd, POLLOUT, 0});
  }

  // A handshake in the backlog completes at once. A dropped one is retried only after a second.
  int connected = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  for (pollfd& socket : sockets) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (::poll(&socket, 1, std::max<int>(0, static_cast<int>(left.count()))) == 1 && (socket.revents & POLLOUT)) {
      int error = 0;
      socklen_t length = sizeof(error);
      getsockopt(socket.fd, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error == 0) ++connected;
    }
  }
  for (pollfd& socket : sockets) ::close(socket.fd);
  EXPECT_EQ(connected, kConnections) << "only " << connected << " connections completed their handshake";
}

TEST_F(StudioServerTest, StopEndsListen) {
  start_server();
  ASSERT_TRUE(client_->Get("/api/model"));
  server_->stop();
  thread_.join();
  auto res = client_->Get("/api/model");
  EXPECT_FALSE(res);
}

}  // namespace
}  // namespace rankone
