#include "errors.hpp"

#include <cctype>

namespace dcae {

Error::Error(ErrorKind kind, const std::string& message) : std::runtime_error(one_line(message)), kind_(kind) {}

std::string one_line(const std::string& text) {
  std::string line;
  bool space = false;
  for (unsigned char c : text) {
    if (std::isspace(c)) {
      space = !line.empty();
    } else {
      if (space) line += ' ';
      space = false;
      line += static_cast<char>(c);
    }
  }
  return line.empty() ? "unknown error" : line;
}

void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

}  // namespace dcae
