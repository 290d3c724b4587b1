// PNG in and out through libpng, converting as the Python runtime's loader
// (dcae_deploy/runtime/imaging.py, through Pillow) does: grayscale and palette become
// RGB, alpha is dropped with a warning (RGBA, gray+alpha, palette with
// transparency), 16-bit grayscale is scaled round(v * 255 / 65535) and other
// 16-bit images keep their high byte (what Pillow's 16-bit unpackers do).
//
// libpng reports errors by longjmp to the setjmp in decode_png_rows. Every
// C++ object that lives across it belongs to the caller and is reached
// through a pointer, so the jump skips no destructor and leaves no
// indeterminate local.
#include <png.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "dcae/codec.hpp"
#include "errors.hpp"
#include "fileio.hpp"
#include "geometry.hpp"

namespace dcae {
namespace {

// libpng's error pointer, for reading and writing alike.
struct PngError {
  char message[256];
};

struct PngReadState {
  const uint8_t* data;
  size_t size;
  size_t position;
};

struct PngRows {
  png_uint_32 width = 0, height = 0;
  int color_type = 0, bit_depth = 0;  // of the file
  bool transparency = false;         // a tRNS chunk
  int channels = 0, depth = 0;        // of the rows read
  std::string size_problem;
  std::vector<uint8_t> pixels;
  std::vector<png_bytep> rows;
};

void on_error(png_structp png, png_const_charp message) {
  auto* error = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(error->message, sizeof error->message, "%s", message);
  std::longjmp(png_jmpbuf(png), 1);
}

void on_warning(png_structp, png_const_charp) {}  // ancillary-chunk trouble: Pillow ignores it too

void read_bytes(png_structp png, png_bytep out, png_size_t count) {
  auto* state = static_cast<PngReadState*>(png_get_io_ptr(png));
  if (count > state->size - state->position) png_error(png, "file is truncated");
  std::memcpy(out, state->data + state->position, count);
  state->position += count;
}

// false when libpng failed (the reason is in the error pointer's message).
bool decode_png_rows(png_structp png, png_infop info, PngReadState* state, PngRows* out) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, state, read_bytes);
  // Our own size limits are checked below, with our message.
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  out->width = png_get_image_width(png, info);
  out->height = png_get_image_height(png, info);
  out->color_type = png_get_color_type(png, info);
  out->bit_depth = png_get_bit_depth(png, info);
  out->transparency = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  out->size_problem = dimension_problem(out->height, out->width);
  if (!out->size_problem.empty()) return true;  // refused before the pixels are decoded
  if (out->color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (out->color_type == PNG_COLOR_TYPE_GRAY && out->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  out->channels = png_get_channels(png, info);
  out->depth = png_get_bit_depth(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  out->pixels.resize(row_bytes * out->height);
  out->rows.resize(out->height);
  for (png_uint_32 r = 0; r < out->height; ++r) out->rows[r] = out->pixels.data() + r * row_bytes;
  png_read_image(png, out->rows.data());
  return true;
}

void write_bytes(png_structp png, png_bytep data, png_size_t count) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + count);
}

void flush_nothing(png_structp) {}

bool encode_png_rows(png_structp png, png_infop info, const Image* image, std::vector<uint8_t>* bytes,
                     std::vector<png_bytep>* rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, bytes, write_bytes, flush_nothing);
  png_set_IHDR(png, info, image->width, image->height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows->data());
  png_write_end(png, nullptr);
  return true;
}

std::string not_png_reason(const std::vector<uint8_t>& data) {
  if (data.empty()) return "empty file, not a PNG image";
  if (data.size() >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
    return "is a JPEG image; this host reads PNG only";
  if (data.size() >= 4 && std::memcmp(data.data(), "DCAE", 4) == 0) return "is a .dcae file, not an image";
  return "is not a PNG image";
}

}  // namespace

Image read_png(const std::string& path, std::vector<std::string>* warnings) {
  const std::vector<uint8_t> data = read_file(path);
  if (data.size() < 8 || png_sig_cmp(data.data(), 0, 8) != 0) fail(ErrorKind::bad_input, path + " " + not_png_reason(data));

  PngReadState state{data.data(), data.size(), 0};
  PngError error{};
  PngRows decoded;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, on_error, on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    throw std::bad_alloc();
  }
  const bool ok = decode_png_rows(png, info, &state, &decoded);
  png_destroy_read_struct(&png, &info, nullptr);
  if (!ok) fail(ErrorKind::bad_input, path + ": cannot decode PNG (" + error.message + ")");
  if (!decoded.size_problem.empty()) fail(ErrorKind::bad_input, decoded.size_problem);

  const bool has_alpha = decoded.color_type & PNG_COLOR_MASK_ALPHA;
  if (warnings && (has_alpha || (decoded.color_type == PNG_COLOR_TYPE_PALETTE && decoded.transparency)))
    warnings->push_back("image has an alpha channel; it is dropped");

  Image image;
  image.height = decoded.height;
  image.width = decoded.width;
  image.rgb.resize(size_t{image.height} * image.width * 3);
  const int channels = decoded.channels;
  const bool wide = decoded.depth == 16;
  // Pillow reads 16-bit grayscale as "I;16" and scales it; its other 16-bit
  // modes keep the high byte.
  const bool scale_gray16 = wide && decoded.color_type == PNG_COLOR_TYPE_GRAY;
  uint8_t* out = image.rgb.data();
  for (png_uint_32 r = 0; r < decoded.height; ++r) {
    const uint8_t* row = decoded.rows[r];
    for (png_uint_32 c = 0; c < decoded.width; ++c) {
      auto sample = [&](int channel) -> uint8_t {
        const size_t at = (size_t{c} * channels + channel) * (wide ? 2 : 1);
        if (!wide) return row[at];
        if (!scale_gray16) return row[at];  // big-endian: the high byte comes first
        const unsigned value = (unsigned{row[at]} << 8) | row[at + 1];
        return static_cast<uint8_t>(std::nearbyint(value * (255.0 / 65535.0)));
      };
      const bool gray = channels <= 2;
      for (int k = 0; k < 3; ++k) *out++ = sample(gray ? 0 : k);
    }
  }
  return image;
}

void write_png(const std::string& path, const Image& image) {
  if (image.rgb.size() != size_t{image.height} * image.width * 3 || !dimension_problem(image.height, image.width).empty())
    fail(ErrorKind::bad_input, "cannot write a " + std::to_string(image.height) + "x" + std::to_string(image.width) +
                                   " image with " + std::to_string(image.rgb.size()) + " bytes of pixels");
  std::vector<uint8_t> bytes;
  PngError error{};
  std::vector<png_bytep> rows(image.height);
  for (uint32_t r = 0; r < image.height; ++r)
    rows[r] = const_cast<png_bytep>(image.rgb.data() + size_t{r} * image.width * 3);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &error, on_error, on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    throw std::bad_alloc();
  }
  const bool ok = encode_png_rows(png, info, &image, &bytes, &rows);
  png_destroy_write_struct(&png, &info);
  if (!ok) fail(ErrorKind::io, "cannot encode PNG for " + path + " (" + error.message + ")");
  write_atomically(path, bytes.data(), bytes.size());
}

}  // namespace dcae
