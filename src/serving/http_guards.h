// Input guards of the studio's HTTP server that need no model. One maps a URL
// path to a file of the web folder without leaving it. The Host header check
// keeps other sites (DNS rebinding) away from a server bound to loopback.
#pragma once

#include <string>

namespace rankone::serving {

/// The target of a static URL path: status 200 with the file and its MIME type, or 403 / 404.
struct StaticFile {
  int status = 404;
  std::string path;
  std::string mime_type;
};

/// Maps a decoded URL path ("/", "/studio.js") to a regular file under `web_root`. Paths with
/// "..", hidden segments, backslashes, '%' (left by double encoding) or control characters
/// give 403, and so do files whose real path leaves `web_root` through a link. Missing files
/// and types other than html, js, css, png, svg, ico and json give 404.
StaticFile resolve_static_file(const std::string& web_root, const std::string& url_path);

/// Whether a Host header names this machine's loopback interface: localhost, 127.0.0.1 or
/// [::1], with any port.
bool is_loopback_host_header(const std::string& host);

/// Whether `host` (a --host value) is a loopback address or name.
bool is_loopback_address(const std::string& host);

}  // namespace rankone::serving
