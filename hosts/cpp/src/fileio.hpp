// Reading whole files, and writing them so that a failure never leaves a
// half-written one (dcae_deploy/runtime/fileio.py's write_atomically).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dcae {

// Error(io) naming the path when it cannot be read (or is a directory).
std::vector<uint8_t> read_file(const std::string& path);

// Writes a temporary file in the same directory, fsyncs it and renames it over
// `path`; on any failure the temporary file is removed and `path` is left as
// it was. Error(io) naming `path`.
void write_atomically(const std::string& path, const uint8_t* data, size_t size);

}  // namespace dcae
