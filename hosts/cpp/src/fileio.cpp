#include "fileio.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "errors.hpp"

namespace dcae {

std::vector<uint8_t> read_file(const std::string& path) {
  auto refuse = [&](const std::string& reason) { fail(ErrorKind::io, reason + ": " + path); };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) refuse(errno == ENOENT ? "no such file" : std::strerror(errno));
  std::vector<uint8_t> data;
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    const bool directory = S_ISDIR(info.st_mode);
    ::close(fd);
    refuse(directory ? "is a directory, not a file" : "not a regular file");
  }
  data.resize(static_cast<size_t>(info.st_size));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t got = ::read(fd, data.data() + done, data.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int error = got < 0 ? errno : 0;
      ::close(fd);
      refuse(error ? std::strerror(error) : "file shrank while being read");
    }
    done += static_cast<size_t>(got);
  }
  ::close(fd);
  return data;
}

void write_atomically(const std::string& path, const uint8_t* data, size_t size) {
  const size_t slash = path.rfind('/');
  const std::string directory = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  auto refuse = [&](int error) { fail(ErrorKind::io, std::string("cannot write ") + path + ": " + std::strerror(error)); };

  // Same directory, so the rename cannot cross filesystems; O_EXCL never
  // touches somebody else's file, and 0666 lets the umask decide.
  std::random_device random;
  std::string temp;
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    char suffix[16];
    std::snprintf(suffix, sizeof suffix, "%08x", static_cast<unsigned>(random()));
    temp = directory + "." + name + "." + suffix + ".tmp";
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) refuse(errno);
  }
  if (fd < 0) refuse(EEXIST);
  size_t done = 0;
  int error = 0;
  while (done < size && !error) {
    const ssize_t wrote = ::write(fd, data + done, size - done);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) error = wrote < 0 ? errno : EIO;
    else done += static_cast<size_t>(wrote);
  }
  // Without the fsync a crash after the rename can leave an empty file under
  // the final name on some filesystems.
  if (!error && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && !error) error = errno;
  if (!error && ::rename(temp.c_str(), path.c_str()) != 0) error = errno;
  if (error) {
    ::unlink(temp.c_str());
    refuse(error);
  }
}

}  // namespace dcae
