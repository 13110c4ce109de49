#include "serving/http_guards.h"

#include <filesystem>
#include <map>

namespace rankone::serving {

namespace fs = std::filesystem;

namespace {

const std::map<std::string, std::string>& mime_types() {
  static const std::map<std::string, std::string> types = {
      {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},   {".png", "image/png"},
      {".svg", "image/svg+xml"},             {".ico", "image/x-icon"},
      {".json", "application/json"}};
  return types;
}

bool has_forbidden_segment(const std::string& relative) {
  size_t start = 0;
  while (start <= relative.size()) {
    size_t end = relative.find('/', start);
    if (end == std::string::npos) end = relative.size();
    std::string segment = relative.substr(start, end - start);
    // Empty segments ("a//b") and dot segments (".", "..", ".hidden") are rejected alike.
    if (segment.empty() || segment[0] == '.') return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

StaticFile resolve_static_file(const std::string& web_root, const std::string& url_path) {
  StaticFile result;
  if (url_path.empty() || url_path[0] != '/') {
    result.status = 403;
    return result;
  }
  std::string relative = url_path == "/" ? "index.html" : url_path.substr(1);
  for (char c : relative) {
    if (c == '\\' || c == '%' || c == ':' || static_cast<unsigned char>(c) < 0x20) {
      result.status = 403;
      return result;
    }
  }
  if (relative.find("..") != std::string::npos || has_forbidden_segment(relative)) {
    result.status = 403;
    return result;
  }

  std::error_code error;
  fs::path root = fs::canonical(web_root, error);
  if (error) return result;  // 404: no web folder
  fs::path file = fs::canonical(root / relative, error);
  if (error || !fs::is_regular_file(file, error)) return result;  // 404

  // A link inside the web folder must not lead out of it.
  std::string root_text = root.string() + "/";
  if (file.string().compare(0, root_text.size(), root_text) != 0) {
    result.status = 403;
    return result;
  }
  auto type = mime_types().find(file.extension().string());
  if (type == mime_types().end()) return result;  // 404: not a page asset

  result.status = 200;
  result.path = file.string();
  result.mime_type = type->second;
  return result;
}

bool is_loopback_address(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]";
}

bool is_loopback_host_header(const std::string& host) {
  std::string name = host;
  if (!name.empty() && name[0] == '[') {
    size_t close = name.find(']');
    if (close == std::string::npos) return false;
    name = name.substr(0, close + 1);
  } else {
    size_t colon = name.find(':');
    if (colon != std::string::npos) name = name.substr(0, colon);
  }
  return is_loopback_address(name);
}

}  // namespace rankone::serving
