// Internal helpers around dcae::Error.
#pragma once

#include <string>

#include "dcae/codec.hpp"

namespace dcae {

// Messages from libraries (OpenVINO, libpng, JSON) can run over several
// lines; every message of ours is one.
std::string one_line(const std::string& text);

[[noreturn]] void fail(ErrorKind kind, const std::string& message);

}  // namespace dcae
