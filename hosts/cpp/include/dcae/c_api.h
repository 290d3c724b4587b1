/* A C interface to dcae::Codec, for hosts in other languages (the benchmarks
 * load it from Python with ctypes: dcae_deploy/bench/cpp_host.py).
 *
 *   char error[512];
 *   dcae_codec* codec = dcae_open("bundle/", "openvino", 0, error, sizeof error);
 *   dcae_encode(codec, rgb, height, width, &file, &file_size, NULL, NULL, NULL);
 *   dcae_decode(codec, file, file_size, 0, &rgb, &height, &width, NULL, NULL);
 *   dcae_free(file); ... dcae_close(codec);
 *
 * Functions returning int give 0 on success and -1 on failure, with the
 * one-line reason in dcae_error(codec). Buffers handed out are malloc'd:
 * release them with dcae_free. A codec is used by one thread at a time. */
#ifndef DCAE_C_API_H
#define DCAE_C_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dcae_codec dcae_codec;

/* NULL on failure, with the reason in `error`. backend: "openvino" or
 * "openvino-bf16"; threads 0: one per core. */
dcae_codec* dcae_open(const char* bundle_dir, const char* backend, int threads, char* error, size_t error_size);
void dcae_close(dcae_codec* codec);

/* rgb: height * width * 3 bytes. The .dcae goes to *file; when `symbols` and
 * `indexes` are given, the encoder's y symbols and scale indexes (*count
 * each, C order over the (1, M, h, w) latent). */
int dcae_encode(dcae_codec* codec, const uint8_t* rgb, uint32_t height, uint32_t width, uint8_t** file,
                size_t* file_size, int32_t** symbols, int32_t** indexes, size_t* count);

/* dcae_encode at a chosen rate: at most one of `quality` (0 to 100; a
 * negative value: none), `max_bytes` (the largest file of at most that many
 * bytes; 0: none) and `target_bpp` (the largest file within 3 % under that
 * many bits per pixel; 0: none); none at all: quality 50, the model's
 * reference rate, which is dcae_encode's file. *gain_code, when given,
 * receives the quantization gain the file was coded at, times 4096. */
int dcae_encode_rate(dcae_codec* codec, const uint8_t* rgb, uint32_t height, uint32_t width, double quality,
                     uint64_t max_bytes, double target_bpp, uint16_t* gain_code, uint8_t** file, size_t* file_size,
                     int32_t** symbols, int32_t** indexes, size_t* count);

/* The image goes to *rgb (height * width * 3); when `symbols` is given, the
 * y symbols read from the stream (*count). */
int dcae_decode(dcae_codec* codec, const uint8_t* file, size_t file_size, int force, uint8_t** rgb,
                uint32_t* height, uint32_t* width, int32_t** symbols, size_t* count);

/* Like dcae_decode without the synthesis transform: reads the y symbols into
 * *symbols (*count) and checks the stream's end, so it fails exactly where
 * dcae_decode would, at a fraction of the cost; no pixels. */
int dcae_read_symbols(dcae_codec* codec, const uint8_t* file, size_t file_size, int force, uint32_t* height,
                      uint32_t* width, int32_t** symbols, size_t* count);

/* The last call's error ("" after a success); its stage timings as a JSON
 * object of milliseconds, and its warnings joined by newlines: valid until
 * the next call on the codec. Before the first call: the opening's warnings
 * (e.g. a bundle this CPU runs badly). */
const char* dcae_error(const dcae_codec* codec);
/* What kind of failure: "bad_input", "corrupt_stream", "desync",
 * "fingerprint", "bundle", "backend", "io" (dcae::ErrorKind), or "" for an
 * internal error. */
const char* dcae_error_kind(const dcae_codec* codec);
const char* dcae_timings_json(const dcae_codec* codec);
const char* dcae_warnings(const dcae_codec* codec);
const char* dcae_numeric_class(const dcae_codec* codec);

void dcae_free(void* buffer);

#ifdef __cplusplus
}
#endif

#endif
