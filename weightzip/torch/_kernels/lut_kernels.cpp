// Lookup-table kernels for palettized weights: bit-packed codebook indices decoded on the fly.
//
// A palettized 2-D weight (rows x cols; a conv weight is viewed as out_channels x (in/groups * kernel))
// is held as:
//   packed:   rows x row_stride bytes, row_stride = ceil(cols * bits / 8); each row is packed with the
//             core's layout (value i at row bits [i*b, (i+1)*b), LSB first), starting on a byte boundary.
//             The buffer carries 8 zero bytes after the last row, so a kernel may read 8 bytes past any
//             group of 8 values.
//   codebook: float32, groups x k, row-major.
//   which codebook row a weight uses:
//     col_offsets == nullptr: codebook row (r / rows_per_group) for all of row r (rows_per_group = 0: row 0);
//     col_offsets != nullptr: codebook[col_offsets[c] + index] (codebooks along the columns).
//
// Every 8 consecutive values of a row fill exactly `bits` bytes, so each group of 8 starts on a byte
// boundary: the SIMD path loads two 32-bit words (values 0-3 and 4-7), shifts each lane by its own
// amount (vpsrlvd), masks, and looks the 8 indices up in registers: one vpermps for k <= 8, two plus a
// blend for k <= 16, four plus three blends for k <= 32, a vgatherdps beyond. Nothing but one row's
// group of 8 values is ever decoded at a time in the GEMV; decode_rows writes float tiles for GEMM/conv.
//
// Plain C ABI (called through ctypes), no Python or torch headers: builds in a second with g++.
// The widest path the CPU has is chosen at run time (__builtin_cpu_supports): AVX-512 for 1-, 2- and 4-bit indices
// into codebooks of <= 16 entries along rows, AVX2/FMA for everything else, a portable scalar path without AVX2.

#include <cstdint>
#include <cmath>
#include <cstring>
#include <vector>
#include <immintrin.h>
#include <omp.h>

namespace {

inline uint32_t load_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

inline uint32_t index_at(const uint8_t* row, int64_t i, int bits) {
    const int64_t bit = i * bits;
    uint32_t word;
    std::memcpy(&word, row + (bit >> 3), 4);  // <= 7 + 8 bits needed: 4 bytes are plenty (padded buffer)
    return (word >> (bit & 7)) & ((1u << bits) - 1u);
}

inline const float* row_codebook(const float* codebook, int k, int64_t r, int64_t rows_per_group) {
    return rows_per_group > 0 ? codebook + (r / rows_per_group) * k : codebook;
}

// for (i = 0; i < n; ++i) body(i), in `threads` OpenMP threads when there are several and the work (about
// `work` weights) is worth a parallel region; serially otherwise (even a one-thread region costs microseconds,
// as much as decoding a small layer).
template <class Body>
inline void parallel_for(int64_t n, int threads, int64_t work, Body body) {
    if (threads > 1 && work > 65536) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; ++i) body(i);
    } else {
        for (int64_t i = 0; i < n; ++i) body(i);
    }
}

// ------------------------------------------------------------------ scalar reference path

void gemv_scalar(const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols,
                 const float* codebook, int k, int64_t rows_per_group, const int32_t* col_offsets,
                 const float* x, int64_t batch, const float* bias, float* y, int threads) {
    parallel_for(rows, threads, rows * cols, [&](int64_t r) {
        const uint8_t* row = packed + r * stride;
        const float* cb = row_codebook(codebook, k, r, rows_per_group);
        for (int64_t n = 0; n < batch; ++n) {
            const float* xn = x + n * cols;
            float acc = 0.f;
            for (int64_t c = 0; c < cols; ++c) {
                const uint32_t i = index_at(row, c, bits);
                acc += (col_offsets ? codebook[col_offsets[c] + i] : cb[i]) * xn[c];
            }
            y[n * rows + r] = acc + (bias ? bias[r] : 0.f);
        }
    });
}

void decode_rows_scalar(const uint8_t* packed, int64_t stride, int bits, int64_t cols, const int64_t* row_ids,
                        int64_t first_row, int64_t count, const float* codebook, int k, int64_t rows_per_group,
                        const int32_t* col_offsets, float* out, int threads) {
    parallel_for(count, threads, count * cols, [&](int64_t n) {
        const int64_t r = row_ids ? row_ids[n] : first_row + n;
        const uint8_t* row = packed + r * stride;
        const float* cb = row_codebook(codebook, k, r, rows_per_group);
        float* o = out + n * cols;
        for (int64_t c = 0; c < cols; ++c) {
            const uint32_t i = index_at(row, c, bits);
            o[c] = col_offsets ? codebook[col_offsets[c] + i] : cb[i];
        }
    });
}

// ------------------------------------------------------------------ AVX2 + FMA path

#define WZ_AVX2 __attribute__((target("avx2,fma")))

struct Unpacker {
    __m256i shifts, mask;
    int hi_byte, hi_shift;
};

WZ_AVX2 inline Unpacker make_unpacker(int bits) {
    Unpacker u;
    u.shifts = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 0, bits, 2 * bits, 3 * bits);
    u.mask = _mm256_set1_epi32((1 << bits) - 1);
    u.hi_byte = (4 * bits) >> 3;
    u.hi_shift = (4 * bits) & 7;
    return u;
}

// The 8 indices of the group of 8 values starting at byte `p` (values 4-7 fit in 32 bits after their shift).
WZ_AVX2 inline __m256i unpack8(const uint8_t* p, const Unpacker& u) {
    const uint32_t lo = load_u32(p);
    const uint32_t hi = load_u32(p + u.hi_byte) >> u.hi_shift;
    const __m256i words = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi32((int)lo)),
                                                  _mm_set1_epi32((int)hi), 1);
    return _mm256_and_si256(_mm256_srlv_epi32(words, u.shifts), u.mask);
}

// Codebook entries in registers (tables of 8 floats) for k <= 32, a gather beyond.
struct Lookup {
    int tables;  // 1, 2, 4, or 0 = gather from `base`
    __m256 t[4];
    const float* base;
};

// Floats p[0 .. valid) of a block of 8 (valid may exceed 8), the rest zero: a masked load, no stack copy.
WZ_AVX2 inline __m256 load_block8(const float* p, int valid) {
    if (valid >= 8) return _mm256_loadu_ps(p);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lanes));
}

WZ_AVX2 inline Lookup make_lookup(const float* cb, int k) {
    Lookup l;
    l.base = cb;
    l.tables = k <= 8 ? 1 : k <= 16 ? 2 : k <= 32 ? 4 : 0;
    for (int i = 0; i < l.tables; ++i) l.t[i] = load_block8(cb + 8 * i, k - 8 * i);
    return l;
}

WZ_AVX2 inline __m256 lookup8(const Lookup& l, __m256i idx) {
    switch (l.tables) {
        case 1:
            return _mm256_permutevar8x32_ps(l.t[0], idx);
        case 2: {
            const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
            return _mm256_blendv_ps(_mm256_permutevar8x32_ps(l.t[0], idx), _mm256_permutevar8x32_ps(l.t[1], idx), bit3);
        }
        case 4: {
            const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
            const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
            const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(l.t[0], idx),
                                              _mm256_permutevar8x32_ps(l.t[1], idx), bit3);
            const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(l.t[2], idx),
                                              _mm256_permutevar8x32_ps(l.t[3], idx), bit3);
            return _mm256_blendv_ps(a, b, bit4);
        }
        default:
            return _mm256_i32gather_ps(l.base, idx, 4);
    }
}

// The 8 weights of row group `g` (columns 8g..8g+7) as floats.
WZ_AVX2 inline __m256 weights8(const uint8_t* row, int64_t g, int bits, const Unpacker& u, const Lookup& l,
                               const float* codebook, const int32_t* col_offsets) {
    __m256i idx = unpack8(row + g * bits, u);
    if (col_offsets) {
        idx = _mm256_add_epi32(idx, _mm256_loadu_si256((const __m256i*)(col_offsets + 8 * g)));
        return _mm256_i32gather_ps(codebook, idx, 4);
    }
    return lookup8(l, idx);
}

WZ_AVX2 inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// The lookup of 8 indices with the table count fixed at compile time (no branch in the inner loop).
template <int TABLES>
WZ_AVX2 inline __m256 lookup_t(const __m256* t, const float* base, __m256i idx) {
    if constexpr (TABLES == 1) {
        return _mm256_permutevar8x32_ps(t[0], idx);
    } else if constexpr (TABLES == 2) {
        const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[0], idx), _mm256_permutevar8x32_ps(t[1], idx), bit3);
    } else if constexpr (TABLES == 4) {
        const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
        const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[0], idx), _mm256_permutevar8x32_ps(t[1], idx), bit3);
        const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[2], idx), _mm256_permutevar8x32_ps(t[3], idx), bit3);
        return _mm256_blendv_ps(a, b, bit4);
    } else {
        return _mm256_i32gather_ps(base, idx, 4);
    }
}

// GEMV for bits in {1, 2, 4, 8} and codebooks along rows ("byte lanes"): 8 packed bytes are widened to 8
// int32 lanes with one vpmovzxbd; shifting all lanes by j*bits gives values l*v + j (v = 8 / bits values a
// byte, l the lane). The inputs are reordered once per call (xr) to match, so the weights never are.
template <int NB, int TABLES, int BITS>
WZ_AVX2 void gemv_lanes(const uint8_t* packed, int64_t stride, int64_t rows, int64_t cols, const float* codebook,
                        int k, int64_t rows_per_group, const float* x, const float* xr, float* y, int threads) {
    constexpr int V = 8 / BITS;      // values per byte
    constexpr int BLOCK = 8 * V;     // values per 8 bytes
    const int64_t blocks = cols / BLOCK;
    const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
    parallel_for(rows, threads, rows * cols, [&](int64_t r) WZ_AVX2 {
        const uint8_t* row = packed + r * stride;
        const float* cb = row_codebook(codebook, k, r, rows_per_group);
        __m256 t[4];
        if constexpr (TABLES > 0) {
            for (int i = 0; i < TABLES; ++i) t[i] = load_block8(cb + 8 * i, k - 8 * i);
        }
        __m256 acc0[NB], acc1[NB];
        for (int n = 0; n < NB; ++n) acc0[n] = acc1[n] = _mm256_setzero_ps();
        __m256 acc2[NB], acc3[NB];
        for (int n = 0; n < NB; ++n) acc2[n] = acc3[n] = _mm256_setzero_ps();
        int64_t b = 0;
        // Two blocks per iteration, four accumulators per batch row: the FMA latency chains stay short.
        for (; b + 1 < blocks; b += 2) {
            const __m256i lanes0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(row + 8 * b)));
            const __m256i lanes1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(row + 8 * b + 8)));
            #pragma GCC unroll 8
            for (int j = 0; j < V; ++j) {
                const __m256i i0 = BITS == 8 ? lanes0 : _mm256_and_si256(_mm256_srli_epi32(lanes0, j * BITS), mask);
                const __m256i i1 = BITS == 8 ? lanes1 : _mm256_and_si256(_mm256_srli_epi32(lanes1, j * BITS), mask);
                const __m256 w0 = lookup_t<TABLES>(t, cb, i0);
                const __m256 w1 = lookup_t<TABLES>(t, cb, i1);
                for (int n = 0; n < NB; ++n) {
                    const float* xb = xr + n * cols + b * BLOCK + 8 * j;
                    if (j & 1) {
                        acc1[n] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), acc1[n]);
                        acc3[n] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + BLOCK), acc3[n]);
                    } else {
                        acc0[n] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), acc0[n]);
                        acc2[n] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + BLOCK), acc2[n]);
                    }
                }
            }
        }
        for (; b < blocks; ++b) {
            const __m256i lanes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(row + 8 * b)));
            #pragma GCC unroll 8
            for (int j = 0; j < V; ++j) {
                const __m256i idx = BITS == 8 ? lanes : _mm256_and_si256(_mm256_srli_epi32(lanes, j * BITS), mask);
                const __m256 w = lookup_t<TABLES>(t, cb, idx);
                for (int n = 0; n < NB; ++n) {
                    const __m256 xv = _mm256_loadu_ps(xr + n * cols + b * BLOCK + 8 * j);
                    if (j & 1) acc1[n] = _mm256_fmadd_ps(w, xv, acc1[n]);
                    else acc0[n] = _mm256_fmadd_ps(w, xv, acc0[n]);
                }
            }
        }
        for (int n = 0; n < NB; ++n) {
            float s = hsum(_mm256_add_ps(_mm256_add_ps(acc0[n], acc1[n]), _mm256_add_ps(acc2[n], acc3[n])));
            for (int64_t c = blocks * BLOCK; c < cols; ++c) s += cb[index_at(row, c, BITS)] * x[n * cols + c];
            y[n * rows + r] = s;
        }
    });
}

// Any bits 1..8, codebooks along rows or columns: values unpacked 8 at a time in natural order (vpsrlvd).
template <int NB, int TABLES, bool COLS>
WZ_AVX2 void gemv_generic(const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols,
                          const float* codebook, int k, int64_t rows_per_group, const int32_t* col_offsets,
                          const float* x, float* y, int threads) {
    const Unpacker u = make_unpacker(bits);
    const int64_t full = cols / 8;
    parallel_for(rows, threads, rows * cols, [&](int64_t r) WZ_AVX2 {
        const uint8_t* row = packed + r * stride;
        const float* cb = COLS ? codebook : row_codebook(codebook, k, r, rows_per_group);
        __m256 t[4];
        if constexpr (TABLES > 0) {
            for (int i = 0; i < TABLES; ++i) t[i] = load_block8(cb + 8 * i, k - 8 * i);
        }
        __m256 acc0[NB], acc1[NB];
        for (int n = 0; n < NB; ++n) acc0[n] = acc1[n] = _mm256_setzero_ps();
        for (int64_t g = 0; g < full; ++g) {
            __m256i idx = unpack8(row + g * bits, u);
            if constexpr (COLS) idx = _mm256_add_epi32(idx, _mm256_loadu_si256((const __m256i*)(col_offsets + 8 * g)));
            const __m256 w = lookup_t<TABLES>(t, cb, idx);
            for (int n = 0; n < NB; ++n) {
                const __m256 xv = _mm256_loadu_ps(x + n * cols + 8 * g);
                if (g & 1) acc1[n] = _mm256_fmadd_ps(w, xv, acc1[n]);
                else acc0[n] = _mm256_fmadd_ps(w, xv, acc0[n]);
            }
        }
        for (int n = 0; n < NB; ++n) {
            float s = hsum(_mm256_add_ps(acc0[n], acc1[n]));
            for (int64_t c = 8 * full; c < cols; ++c) {
                const uint32_t i = index_at(row, c, bits);
                s += (COLS ? codebook[col_offsets[c] + i] : cb[i]) * x[n * cols + c];
            }
            y[n * rows + r] = s;
        }
    });
}

// The 4 byte planes of a codebook of <= 16 floats as vpshufb tables (both 128-bit lanes alike).
WZ_AVX2 inline void nibble_tables(const float* cb, int k, __m256i t[4]) {
    // In registers (once per row: on rows of a few hundred weights a scalar byte loop cost as much as the row):
    // each group of 4 floats regrouped as [byte 0 of the 4 | byte 1 | byte 2 | byte 3], then a 4x4 dword
    // transpose gives plane p = byte p of floats 0..15.
    // (k < 16: the missing entries read as zero, masked in registers; a zeroed stack copy per row compiled to a
    // `rep stos` that cost ~20 % of a 1024 x 256 GEMV.)
    const __m128i bytes = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m128i g[4];
    for (int q = 0; q < 4; ++q) {
        __m128i v;
        if (k >= 4 * q + 4) {
            v = _mm_loadu_si128((const __m128i*)(cb + 4 * q));
        } else {
            const __m128i lanes = _mm_setr_epi32(4 * q, 4 * q + 1, 4 * q + 2, 4 * q + 3);
            v = _mm_maskload_epi32((const int*)(cb + 4 * q), _mm_cmpgt_epi32(_mm_set1_epi32(k), lanes));
        }
        g[q] = _mm_shuffle_epi8(v, bytes);
    }
    const __m128i a = _mm_unpacklo_epi32(g[0], g[1]), b = _mm_unpackhi_epi32(g[0], g[1]);
    const __m128i c = _mm_unpacklo_epi32(g[2], g[3]), d = _mm_unpackhi_epi32(g[2], g[3]);
    t[0] = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(a, c));
    t[1] = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(a, c));
    t[2] = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(b, d));
    t[3] = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(b, d));
}

// The 32 weights of 16 packed bytes: w[q] holds values 8q + {0, 2, 4, 6, 1, 3, 5, 7}.
WZ_AVX2 inline void nibbles32(const uint8_t* p, const __m256i t[4], __m128i low4, __m256 w[4]) {
    const __m128i v = _mm_loadu_si128((const __m128i*)p);
    const __m128i lo = _mm_and_si128(v, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
    const __m256i nib = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    const __m256i p0 = _mm256_shuffle_epi8(t[0], nib), p1 = _mm256_shuffle_epi8(t[1], nib);
    const __m256i p2 = _mm256_shuffle_epi8(t[2], nib), p3 = _mm256_shuffle_epi8(t[3], nib);
    const __m256i a = _mm256_unpacklo_epi8(p0, p1), b = _mm256_unpackhi_epi8(p0, p1);
    const __m256i c = _mm256_unpacklo_epi8(p2, p3), d = _mm256_unpackhi_epi8(p2, p3);
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(a, c));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(a, c));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(b, d));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(b, d));
}

// The 64 weights of 32 packed bytes, in 8 float vectors: the low nibbles of both 128-bit halves are looked up
// in one go, then the high nibbles (no cross-lane insert). w[4h + q] element e holds the value
// 2 * (16 * (e / 4) + 4 * q + e % 4) + h (see reorder_nibbles).
WZ_AVX2 inline void nibbles64(const uint8_t* p, const __m256i t[4], __m256i low4, __m256 w[8]) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)p);
    const __m256i nibs[2] = {_mm256_and_si256(v, low4), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4)};
    for (int h = 0; h < 2; ++h) {
        const __m256i p0 = _mm256_shuffle_epi8(t[0], nibs[h]), p1 = _mm256_shuffle_epi8(t[1], nibs[h]);
        const __m256i p2 = _mm256_shuffle_epi8(t[2], nibs[h]), p3 = _mm256_shuffle_epi8(t[3], nibs[h]);
        const __m256i a = _mm256_unpacklo_epi8(p0, p1), b = _mm256_unpackhi_epi8(p0, p1);
        const __m256i c = _mm256_unpacklo_epi8(p2, p3), d = _mm256_unpackhi_epi8(p2, p3);
        w[4 * h + 0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(a, c));
        w[4 * h + 1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(a, c));
        w[4 * h + 2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(b, d));
        w[4 * h + 3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(b, d));
    }
}

// GEMV for 4-bit indices into codebooks of <= 16 entries along rows ("byte planes"): the 4 bytes of the
// 16 codebook floats form 4 byte tables of 16 entries; vpshufb looks 32 nibbles up in each, and two rounds
// of unpacks reassemble the floats (in the order given by reorder_nibbles, which the inputs are put in).
// 64 values per step (12 shuffles per 32 weights, the shuffle ports are the bound; 13 with 32 per step);
// one remaining block of 32 the same way 32 at a time, the rest scalar.
template <int NB>
WZ_AVX2 void gemv_nibbles(const uint8_t* packed, int64_t stride, int64_t rows, int64_t cols, const float* codebook,
                          int k, int64_t rows_per_group, const float* x, const float* xr, float* y, int threads) {
    constexpr int A = 4;  // accumulators per batch row (8 spilled them to the stack: 16 ymm registers in all)
    const int64_t blocks64 = cols / 64;
    const bool half = cols % 64 >= 32;
    const int64_t done = 64 * blocks64 + (half ? 32 : 0);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m256i low4x2 = _mm256_set1_epi8(0x0F);
    parallel_for(rows, threads, rows * cols, [&](int64_t r) WZ_AVX2 {
        const uint8_t* row = packed + r * stride;
        const float* cb = row_codebook(codebook, k, r, rows_per_group);
        __m256i t[4];
        nibble_tables(cb, k, t);
        __m256 acc[A][NB];
        for (int q = 0; q < A; ++q)
            for (int n = 0; n < NB; ++n) acc[q][n] = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks64; ++b) {
            __m256 w[8];
            // 1 KiB ahead (into the next rows near a row's end; a prefetch never faults): -10-15 % on 4096 x 4096
            _mm_prefetch((const char*)(row + 32 * b + 1024), _MM_HINT_T0);
            nibbles64(row + 32 * b, t, low4x2, w);
            for (int q = 0; q < 8; ++q)
                for (int n = 0; n < NB; ++n)
                    acc[q % A][n] = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xr + n * cols + 64 * b + 8 * q), acc[q % A][n]);
        }
        if (half) {
            __m256 w[4];
            nibbles32(row + 32 * blocks64, t, low4, w);
            for (int q = 0; q < 4; ++q)
                for (int n = 0; n < NB; ++n)
                    acc[q][n] = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xr + n * cols + 64 * blocks64 + 8 * q), acc[q][n]);
        }
        for (int n = 0; n < NB; ++n) {
            __m256 sum = acc[0][n];
            for (int q = 1; q < A; ++q) sum = _mm256_add_ps(sum, acc[q][n]);
            float s = hsum(sum);
            for (int64_t c = done; c < cols; ++c) s += cb[index_at(row, c, 4)] * x[n * cols + c];
            y[n * rows + r] = s;
        }
    });
}

// xr for gemv_nibbles: each block of 64 inputs in the order of nibbles64, then one block of 32 (if any) in the
// order of nibbles32 (float vector q holds inputs 8q + {0, 2, 4, 6, 1, 3, 5, 7}), the rest as they are.
void reorder_nibbles(const float* x, int64_t batch, int64_t cols, float* xr) {
    static const int order32[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    for (int64_t n = 0; n < batch; ++n) {
        const float* xn = x + n * cols;
        float* o = xr + n * cols;
        const int64_t blocks64 = cols / 64;
        for (int64_t b = 0; b < blocks64; ++b)
            for (int h = 0; h < 2; ++h)
                for (int q = 0; q < 4; ++q)
                    for (int e = 0; e < 8; ++e)
                        o[64 * b + 8 * (4 * h + q) + e] = xn[64 * b + 2 * (16 * (e / 4) + 4 * q + e % 4) + h];
        int64_t c = 64 * blocks64;
        if (cols - c >= 32) {
            for (int q = 0; q < 4; ++q)
                for (int e = 0; e < 8; ++e) o[c + 8 * q + e] = xn[c + 8 * q + order32[e]];
            c += 32;
        }
        for (; c < cols; ++c) o[c] = xn[c];
    }
}

// xr: each block of 8 * (8 / bits) inputs reordered to the byte-lane order of gemv_lanes.
void reorder_inputs(const float* x, int64_t batch, int64_t cols, int bits, float* xr) {
    const int v = 8 / bits, block = 8 * v;
    for (int64_t n = 0; n < batch; ++n) {
        const float* xn = x + n * cols;
        float* o = xr + n * cols;
        const int64_t blocks = cols / block;
        for (int64_t b = 0; b < blocks; ++b)
            for (int j = 0; j < v; ++j)
                for (int l = 0; l < 8; ++l) o[b * block + 8 * j + l] = xn[b * block + l * v + j];
        for (int64_t c = blocks * block; c < cols; ++c) o[c] = xn[c];
    }
}

template <int NB>
WZ_AVX2 void gemv_avx2_block(const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols,
                             const float* codebook, int k, int64_t rows_per_group, const int32_t* col_offsets,
                             const float* x, const float* xr, float* y, int threads) {
    const int tables = k <= 8 ? 1 : k <= 16 ? 2 : k <= 32 ? 4 : 0;
#define WZ_ARGS_L packed, stride, rows, cols, codebook, k, rows_per_group, x, xr, y, threads
#define WZ_ARGS_G packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, x, y, threads
    if (col_offsets) return gemv_generic<NB, 0, true>(WZ_ARGS_G);
    if (xr) {
        switch (bits) {
            case 1: return gemv_lanes<NB, 1, 1>(WZ_ARGS_L);
            case 2: return gemv_lanes<NB, 1, 2>(WZ_ARGS_L);
            case 4: return gemv_nibbles<NB>(WZ_ARGS_L);
            default: return gemv_lanes<NB, 0, 8>(WZ_ARGS_L);
        }
    }
    switch (tables) {
        case 1: return gemv_generic<NB, 1, false>(WZ_ARGS_G);
        case 2: return gemv_generic<NB, 2, false>(WZ_ARGS_G);
        case 4: return gemv_generic<NB, 4, false>(WZ_ARGS_G);
        default: return gemv_generic<NB, 0, false>(WZ_ARGS_G);
    }
#undef WZ_ARGS_L
#undef WZ_ARGS_G
}

// Row r of the weight decoded to `o` (cols floats).
WZ_AVX2 inline void decode_row_avx2(const uint8_t* packed, int64_t stride, int bits, int64_t cols, int64_t r,
                                    const float* codebook, int k, int64_t rows_per_group, const int32_t* col_offsets,
                                    const Unpacker& u, float* o) {
    const uint8_t* row = packed + r * stride;
    const float* cb = row_codebook(codebook, k, r, rows_per_group);
    if (bits == 4 && k <= 16 && col_offsets == nullptr) {  // 32 at a time through the byte planes, reordered
        __m256i t[4];
        nibble_tables(cb, k, t);
        const __m128i low4 = _mm_set1_epi8(0x0F);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        const int64_t blocks = cols / 32;
        for (int64_t b = 0; b < blocks; ++b) {
            __m256 w[4];
            nibbles32(row + 16 * b, t, low4, w);
            for (int q = 0; q < 4; ++q) _mm256_storeu_ps(o + 32 * b + 8 * q, _mm256_permutevar8x32_ps(w[q], order));
        }
        for (int64_t c = 32 * blocks; c < cols; ++c) o[c] = cb[index_at(row, c, 4)];
        return;
    }
    const Lookup l = make_lookup(cb, col_offsets ? 33 : k);
    const int64_t full = cols / 8;
    for (int64_t g = 0; g < full; ++g) _mm256_storeu_ps(o + 8 * g, weights8(row, g, bits, u, l, codebook, col_offsets));
    for (int64_t c = 8 * full; c < cols; ++c) {
        const uint32_t i = index_at(row, c, bits);
        o[c] = col_offsets ? codebook[col_offsets[c] + i] : cb[i];
    }
}

WZ_AVX2 void decode_rows_avx2(const uint8_t* packed, int64_t stride, int bits, int64_t cols, const int64_t* row_ids,
                              int64_t first_row, int64_t count, const float* codebook, int k,
                              int64_t rows_per_group, const int32_t* col_offsets, float* out, int threads) {
    const Unpacker u = make_unpacker(bits);
    parallel_for(count, threads, count * cols, [&](int64_t n) WZ_AVX2 {
        decode_row_avx2(packed, stride, bits, cols, row_ids ? row_ids[n] : first_row + n, codebook, k,
                        rows_per_group, col_offsets, u, out + n * cols);
    });
}

// y (batch x rows) = x (batch x cols) @ W^T for moderate batches whose inputs fit in L2: one parallel
// region; each thread decodes two weight rows at a time into an L1-sized buffer and multiplies them with
// the inputs four batch rows at a time (8 accumulators; each decoded vector feeds 4 FMAs).
WZ_AVX2 void gemm_rows_avx2(const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols,
                            const float* codebook, int k, int64_t rows_per_group, const int32_t* col_offsets,
                            const float* x, int64_t batch, float* y, int threads) {
    const Unpacker u = make_unpacker(bits);
    const int64_t full = cols / 8;
#pragma omp parallel num_threads(threads)
    {
        float* w = static_cast<float*>(_mm_malloc(sizeof(float) * (2 * cols + 16), 32));
        float* w1 = w + ((cols + 7) / 8) * 8;
#pragma omp for schedule(static)
        for (int64_t pair = 0; pair < (rows + 1) / 2; ++pair) {
            const int64_t r = 2 * pair;
            const bool two = r + 1 < rows;
            decode_row_avx2(packed, stride, bits, cols, r, codebook, k, rows_per_group, col_offsets, u, w);
            if (two) decode_row_avx2(packed, stride, bits, cols, r + 1, codebook, k, rows_per_group, col_offsets, u, w1);
            else std::memset(w1, 0, sizeof(float) * cols);
            for (int64_t n0 = 0; n0 < batch; n0 += 4) {
                const int nb = batch - n0 < 4 ? (int)(batch - n0) : 4;
                const float* xs[4];
                for (int i = 0; i < 4; ++i) xs[i] = x + (n0 + (i < nb ? i : 0)) * cols;
                __m256 a0[4], a1[4];
                for (int i = 0; i < 4; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
                for (int64_t g = 0; g < full; ++g) {
                    const __m256 v0 = _mm256_load_ps(w + 8 * g), v1 = _mm256_load_ps(w1 + 8 * g);
                    for (int i = 0; i < 4; ++i) {
                        const __m256 xv = _mm256_loadu_ps(xs[i] + 8 * g);
                        a0[i] = _mm256_fmadd_ps(v0, xv, a0[i]);
                        a1[i] = _mm256_fmadd_ps(v1, xv, a1[i]);
                    }
                }
                for (int i = 0; i < nb; ++i) {
                    float s0 = hsum(a0[i]), s1 = hsum(a1[i]);
                    for (int64_t c = 8 * full; c < cols; ++c) {
                        s0 += w[c] * xs[i][c];
                        s1 += w1[c] * xs[i][c];
                    }
                    y[(n0 + i) * rows + r] = s0;
                    if (two) y[(n0 + i) * rows + r + 1] = s1;
                }
            }
        }
        _mm_free(w);
    }
}

// y (batch x rows) = x @ W^T for a pruned palettized W held as CSR with relative indices (see wz_sparse_gemm).
// xt is the input transposed (cols x batch), so the batch values of one column are contiguous.
template <int NB>
void sparse_rows(const int64_t* row_ptr, const uint8_t* gaps, const uint8_t* values, int64_t r, const float* cb,
                 const float* xt, int64_t batch, int64_t n0, int64_t rows, float* y) {
    float acc[NB] = {0};
    int64_t col = -1;
    int64_t e = row_ptr[r];
    if constexpr (NB == 1) {  // one input row: four accumulators, so the adds do not wait on each other
        float a[4] = {0.f, 0.f, 0.f, 0.f};
        for (; e + 4 <= row_ptr[r + 1]; e += 4)
            for (int j = 0; j < 4; ++j) {
                col += (int64_t)gaps[e + j] + 1;
                a[j] += cb[values[e + j]] * xt[col * batch + n0];
            }
        acc[0] = (a[0] + a[1]) + (a[2] + a[3]);
    }
    for (; e < row_ptr[r + 1]; ++e) {
        col += (int64_t)gaps[e] + 1;
        const float w = cb[values[e]];
        const float* xc = xt + col * batch + n0;
        for (int i = 0; i < NB; ++i) acc[i] += w * xc[i];
    }
    for (int i = 0; i < NB; ++i) y[(n0 + i) * rows + r] = acc[i];
}

// ------------------------------------------------------------------ AVX-512 path (1/2/4-bit indices, k <= 16)
//
// A codebook of <= 16 floats fits one zmm register, and vpermps looks 16 indices up in it using only each
// lane's low 4 bits. So a 64-byte load of packed b-bit indices (16 dword lanes of V = 32 / b values each)
// needs no unpacking: shifting all lanes right by b*s brings value s of every lane to the bottom, and one
// vpermps turns the 16 of them into weights (1 shuffle per 16 weights; the AVX2 byte-plane path takes 6 at
// 4 bits). Below 4 bits the next values' bits lie above the index, so the table repeats the codebook with
// period 2^b (entry i = codebook[i mod 2^b]) instead of masking. Lane l of shift s is value V*l + s of the
// 16V-value block: the GEMV and GEMM kernels multiply with inputs put in that order once per call
// (reorder_lanes); decode_rows, whose tiles go to BLAS/oneDNN, writes natural order (4 bits only: 16 values
// from 8 bytes, each dword broadcast to 8 lanes, per-lane shifts, one vpermps).
// Used for bits 1, 2, 4 with codebooks along rows and cols a multiple of the block (512, 256, 128 values)
// in the GEMV/GEMM (the AVX2 kernels otherwise), for 4 bits and any cols in decode_rows.

// GCC 12's AVX-512 headers start results from _mm512_undefined_ps(), which -W(maybe-)uninitialized flag
// wherever they are inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define WZ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

// The lookup table of a codebook of k <= 2^BITS entries: entry i = cb[i mod 2^BITS] (missing entries zero).
template <int BITS>
WZ_AVX512 inline __m512 table16(const float* cb, int k) {
    const __m512 t = _mm512_maskz_loadu_ps(k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << k) - 1u), cb);
    if constexpr (BITS >= 4) return t;
    const __m512i period = _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((1 << BITS) - 1));
    return _mm512_permutexvar_ps(period, t);
}

// Values per 64-byte block of BITS-bit indices.
template <int BITS>
constexpr int64_t lane_block() { return 16 * (32 / BITS); }

// x (batch x cols, cols a multiple of the block) in lane order: xr[B*b + 16s + l] = x[B*b + V*l + s].
template <int BITS>
void reorder_lanes(const float* x, int64_t batch, int64_t cols, float* xr) {
    constexpr int V = 32 / BITS;
    constexpr int64_t B = lane_block<BITS>();
    for (int64_t n = 0; n < batch; ++n)
        for (int64_t b = 0; b < cols; b += B)
            for (int s = 0; s < V; ++s)
                for (int l = 0; l < 16; ++l) xr[n * cols + b + 16 * s + l] = x[n * cols + b + V * l + s];
}

// Whether the AVX-512 GEMV/GEMM serve this weight.
bool lanes512(int bits, int k, const int32_t* col_offsets, int64_t cols) {
    if (col_offsets != nullptr || k > 16 || cols <= 0) return false;
    switch (bits) {
        case 1: return cols % lane_block<1>() == 0;
        case 2: return cols % lane_block<2>() == 0;
        case 4: return cols % lane_block<4>() == 0;
        default: return false;
    }
}

// y (NB x rows) for NB <= 4 batch rows of reordered inputs xr; four accumulators per batch row.
template <int NB, int BITS>
WZ_AVX512 void gemv512(const uint8_t* packed, int64_t stride, int64_t rows, int64_t cols, const float* codebook,
                       int k, int64_t rows_per_group, const float* xr, float* y, int64_t y_stride, int threads) {
    constexpr int V = 32 / BITS;
    constexpr int64_t B = lane_block<BITS>();
    const int64_t blocks = cols / B;
    parallel_for(rows, threads, rows * cols, [&](int64_t r) WZ_AVX512 {
        const uint8_t* row = packed + r * stride;
        const __m512 t = table16<BITS>(row_codebook(codebook, k, r, rows_per_group), k);
        __m512 acc[NB][4];
        for (int n = 0; n < NB; ++n)
            for (int a = 0; a < 4; ++a) acc[n][a] = _mm512_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
            _mm_prefetch((const char*)(row + 64 * b + 1024), _MM_HINT_T0);
            const __m512i v = _mm512_loadu_si512((const void*)(row + 64 * b));
            #pragma GCC unroll 32
            for (int s = 0; s < V; ++s) {
                const __m512 w = _mm512_permutexvar_ps(_mm512_srli_epi32(v, BITS * s), t);
                for (int n = 0; n < NB; ++n)
                    acc[n][s & 3] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xr + n * cols + B * b + 16 * s), acc[n][s & 3]);
            }
        }
        for (int n = 0; n < NB; ++n)
            y[n * y_stride + r] = _mm512_reduce_add_ps(
                _mm512_add_ps(_mm512_add_ps(acc[n][0], acc[n][1]), _mm512_add_ps(acc[n][2], acc[n][3])));
    });
}

template <int BITS>
WZ_AVX512 void gemv512_batch(const uint8_t* packed, int64_t stride, int64_t rows, int64_t cols, const float* codebook,
                             int k, int64_t rows_per_group, const float* xr, int64_t batch, float* y, int threads) {
    for (int64_t n0 = 0; n0 < batch; n0 += 4) {
        const float* xs = xr + n0 * cols;
        float* ys = y + n0 * rows;
        switch (batch - n0 < 4 ? batch - n0 : 4) {
            case 1: gemv512<1, BITS>(packed, stride, rows, cols, codebook, k, rows_per_group, xs, ys, rows, threads); break;
            case 2: gemv512<2, BITS>(packed, stride, rows, cols, codebook, k, rows_per_group, xs, ys, rows, threads); break;
            case 3: gemv512<3, BITS>(packed, stride, rows, cols, codebook, k, rows_per_group, xs, ys, rows, threads); break;
            default: gemv512<4, BITS>(packed, stride, rows, cols, codebook, k, rows_per_group, xs, ys, rows, threads); break;
        }
    }
}

// Row r decoded in lane order (cols a multiple of the block).
template <int BITS>
WZ_AVX512 inline void decode_row_lanes(const uint8_t* row, __m512 t, int64_t cols, float* o) {
    constexpr int V = 32 / BITS;
    constexpr int64_t B = lane_block<BITS>();
    for (int64_t b = 0; b < cols / B; ++b) {
        const __m512i v = _mm512_loadu_si512((const void*)(row + 64 * b));
        #pragma GCC unroll 32
        for (int s = 0; s < V; ++s) _mm512_store_ps(o + B * b + 16 * s, _mm512_permutexvar_ps(_mm512_srli_epi32(v, BITS * s), t));
    }
}

// y (batch x rows) = xr @ W^T for inputs that fit in L2: each thread decodes R = 4 weight rows into an
// aligned buffer (lane order), then multiplies them with up to 6 batch rows at a time (24 accumulators:
// 10 loads per 24 FMAs).
template <int NB>
WZ_AVX512 inline void block4xNB(const float* w, const float* xr, int64_t cols, int64_t n0, int rows_here,
                                int64_t r0, int64_t rows, float* y) {
    __m512 acc[4][NB];
    for (int i = 0; i < 4; ++i)
        for (int n = 0; n < NB; ++n) acc[i][n] = _mm512_setzero_ps();
    const float* xs = xr + n0 * cols;
    for (int64_t c = 0; c < cols; c += 16) {
        const __m512 w0 = _mm512_load_ps(w + c), w1 = _mm512_load_ps(w + cols + c);
        const __m512 w2 = _mm512_load_ps(w + 2 * cols + c), w3 = _mm512_load_ps(w + 3 * cols + c);
        for (int n = 0; n < NB; ++n) {
            const __m512 xv = _mm512_loadu_ps(xs + n * cols + c);
            acc[0][n] = _mm512_fmadd_ps(w0, xv, acc[0][n]);
            acc[1][n] = _mm512_fmadd_ps(w1, xv, acc[1][n]);
            acc[2][n] = _mm512_fmadd_ps(w2, xv, acc[2][n]);
            acc[3][n] = _mm512_fmadd_ps(w3, xv, acc[3][n]);
        }
    }
    for (int n = 0; n < NB; ++n)
        for (int i = 0; i < rows_here; ++i) y[(n0 + n) * rows + r0 + i] = _mm512_reduce_add_ps(acc[i][n]);
}

template <int BITS>
WZ_AVX512 void gemm512(const uint8_t* packed, int64_t stride, int64_t rows, int64_t cols, const float* codebook, int k,
                       int64_t rows_per_group, const float* xr, int64_t batch, float* y, int threads) {
#pragma omp parallel num_threads(threads)
    {
        float* w = static_cast<float*>(_mm_malloc(sizeof(float) * 4 * cols, 64));
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < (rows + 3) / 4; ++blk) {
            const int64_t r0 = 4 * blk;
            const int here = rows - r0 < 4 ? (int)(rows - r0) : 4;
            for (int i = 0; i < 4; ++i) {
                const int64_t r = r0 + (i < here ? i : 0);  // missing rows: row r0 again, not written
                decode_row_lanes<BITS>(packed + r * stride,
                                       table16<BITS>(row_codebook(codebook, k, r, rows_per_group), k), cols, w + i * cols);
            }
            int64_t n0 = 0;
            for (; n0 + 6 <= batch; n0 += 6) block4xNB<6>(w, xr, cols, n0, here, r0, rows, y);
            switch (batch - n0) {
                case 1: block4xNB<1>(w, xr, cols, n0, here, r0, rows, y); break;
                case 2: block4xNB<2>(w, xr, cols, n0, here, r0, rows, y); break;
                case 3: block4xNB<3>(w, xr, cols, n0, here, r0, rows, y); break;
                case 4: block4xNB<4>(w, xr, cols, n0, here, r0, rows, y); break;
                case 5: block4xNB<5>(w, xr, cols, n0, here, r0, rows, y); break;
                default: break;
            }
        }
        _mm_free(w);
    }
}

// The GEMV (gemm = false) or GEMM of a weight lanes512 accepts: inputs reordered, then the kernel for its width.
void lanes512_multiply(bool gemm, const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols,
                       const float* codebook, int k, int64_t rows_per_group, const float* x, int64_t batch, float* y,
                       int threads) {
    float* xr = static_cast<float*>(_mm_malloc(sizeof(float) * batch * cols, 64));
#define WZ_LANES(B)                                                                                          \
    reorder_lanes<B>(x, batch, cols, xr);                                                                   \
    if (gemm) gemm512<B>(packed, stride, rows, cols, codebook, k, rows_per_group, xr, batch, y, threads);   \
    else gemv512_batch<B>(packed, stride, rows, cols, codebook, k, rows_per_group, xr, batch, y, threads);
    switch (bits) {
        case 1: { WZ_LANES(1) } break;
        case 2: { WZ_LANES(2) } break;
        default: { WZ_LANES(4) } break;
    }
#undef WZ_LANES
    _mm_free(xr);
}

// Rows decoded in natural order (tiles for BLAS/oneDNN, embedding rows): 16 values from each 8 bytes.
WZ_AVX512 void decode_rows512(const uint8_t* packed, int64_t stride, int64_t cols, const int64_t* row_ids,
                              int64_t first_row, int64_t count, const float* codebook, int k, int64_t rows_per_group,
                              float* out, int threads) {
    parallel_for(count, threads, count * cols, [&](int64_t n) WZ_AVX512 {
        const int64_t r = row_ids ? row_ids[n] : first_row + n;
        const uint8_t* row = packed + r * stride;
        const float* cb = row_codebook(codebook, k, r, rows_per_group);
        const __m512 t = table16<4>(cb, k);
        const __m512i pick = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
        float* o = out + n * cols;
        const int64_t full = cols / 16;
        for (int64_t g = 0; g < full; ++g) {
            const __m512i words = _mm512_zextsi128_si512(_mm_loadl_epi64((const __m128i*)(row + 8 * g)));
            const __m512i idx = _mm512_srlv_epi32(_mm512_permutexvar_epi32(pick, words), shifts);
            _mm512_storeu_ps(o + 16 * g, _mm512_permutexvar_ps(idx, t));
        }
        for (int64_t c = 16 * full; c < cols; ++c) o[c] = cb[index_at(row, c, 4)];
    });
}

bool use_avx512(int simd) {
    static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return simd >= 2 && supported;
}

bool use_avx2(int simd) {
    static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return simd >= 1 && supported;
}

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; the Python loader refuses a library of another version.
int wz_abi_version() { return 6; }

// The widest SIMD path this CPU takes: 2 AVX-512 (1/2/4-bit kernels), 1 AVX2 + FMA, 0 scalar. A call's `simd`
// argument caps it the same way (0 scalar, 1 at most AVX2, 2 whatever the CPU has), for tests and benchmarks.
int wz_simd_level() { return use_avx512(2) ? 2 : use_avx2(1) ? 1 : 0; }

// y (batch x rows) = x (batch x cols) @ W^T (+ bias). Meant for small batches (a GEMV per batch row).
void wz_gemv(const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols, const float* codebook,
             int k, int64_t rows_per_group, const int32_t* col_offsets, const float* x, int64_t batch,
             const float* bias, float* y, int threads, int simd) {
    if (!use_avx2(simd)) {
        gemv_scalar(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, x, batch, bias, y,
                    threads);
        return;
    }
    if (use_avx512(simd) && lanes512(bits, k, col_offsets, cols)) {
        lanes512_multiply(false, packed, stride, bits, rows, cols, codebook, k, rows_per_group, x, batch, y, threads);
        if (bias)
            for (int64_t n = 0; n < batch; ++n)
                for (int64_t r = 0; r < rows; ++r) y[n * rows + r] += bias[r];
        return;
    }
    const bool lanes = col_offsets == nullptr && (bits == 1 || bits == 2 || bits == 4 || bits == 8) && cols >= 64;
    float* xr = nullptr;
    if (lanes) {
        xr = new float[batch * cols];
        if (bits == 4)
            reorder_nibbles(x, batch, cols, xr);
        else
            reorder_inputs(x, batch, cols, bits, xr);
    }
    for (int64_t n0 = 0; n0 < batch; n0 += 4) {
        const int64_t nb = batch - n0 < 4 ? batch - n0 : 4;
        const float* xs = x + n0 * cols;
        const float* xrs = xr ? xr + n0 * cols : nullptr;
        float* ys = y + n0 * rows;
        switch (nb) {
            case 1: gemv_avx2_block<1>(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, xs, xrs, ys, threads); break;
            case 2: gemv_avx2_block<2>(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, xs, xrs, ys, threads); break;
            case 3: gemv_avx2_block<3>(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, xs, xrs, ys, threads); break;
            default: gemv_avx2_block<4>(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, xs, xrs, ys, threads); break;
        }
    }
    delete[] xr;
    if (bias)
        for (int64_t n = 0; n < batch; ++n)
            for (int64_t r = 0; r < rows; ++r) y[n * rows + r] += bias[r];
}

// y (batch x rows) = x (batch x cols) @ W^T, each weight row decoded once into L1 and used for every
// batch row (meant for inputs that fit in L2). Scalar CPUs: the GEMV path.
void wz_gemm_rows(const uint8_t* packed, int64_t stride, int bits, int64_t rows, int64_t cols, const float* codebook,
                  int k, int64_t rows_per_group, const int32_t* col_offsets, const float* x, int64_t batch, float* y,
                  int threads, int simd) {
    if (!use_avx2(simd)) {
        gemv_scalar(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, x, batch, nullptr, y,
                    threads);
        return;
    }
    if (use_avx512(simd) && lanes512(bits, k, col_offsets, cols)) {
        lanes512_multiply(true, packed, stride, bits, rows, cols, codebook, k, rows_per_group, x, batch, y, threads);
        return;
    }
    gemm_rows_avx2(packed, stride, bits, rows, cols, codebook, k, rows_per_group, col_offsets, x, batch, y, threads);
}

// out (count x cols) = the decoded rows row_ids[0..count) (row_ids == nullptr: first_row .. first_row+count).
void wz_decode_rows(const uint8_t* packed, int64_t stride, int bits, int64_t cols, const int64_t* row_ids,
                    int64_t first_row, int64_t count, const float* codebook, int k, int64_t rows_per_group,
                    const int32_t* col_offsets, float* out, int threads, int simd) {
    if (use_avx512(simd) && bits == 4 && k <= 16 && col_offsets == nullptr)
        decode_rows512(packed, stride, cols, row_ids, first_row, count, codebook, k, rows_per_group, out, threads);
    else if (use_avx2(simd))
        decode_rows_avx2(packed, stride, bits, cols, row_ids, first_row, count, codebook, k, rows_per_group,
                         col_offsets, out, threads);
    else
        decode_rows_scalar(packed, stride, bits, cols, row_ids, first_row, count, codebook, k, rows_per_group,
                           col_offsets, out, threads);
}

// y (batch x rows) = x @ W^T for a pruned palettized W (rows x cols) stored as CSR with relative indices:
// row r's entries are [row_ptr[r], row_ptr[r + 1]); entry e lies gaps[e] + 1 columns after the previous
// one (the row's first: at column gaps[e]) and holds codebook index values[e]. The codebook rows are
// k_stride floats apart; the caller appends a 0.0 to each, whose index marks the filler entries that
// bridge a gap longer than 255 columns. xt: the input transposed, cols x batch.
void wz_sparse_gemm(const int64_t* row_ptr, const uint8_t* gaps, const uint8_t* values, int64_t rows,
                    const float* codebook, int k_stride, int64_t rows_per_group, const float* xt, int64_t batch,
                    float* y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; ++r) {
        const float* cb = row_codebook(codebook, k_stride, r, rows_per_group);
        int64_t n0 = 0;
        for (; n0 + 8 <= batch; n0 += 8) sparse_rows<8>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y);
        switch (batch - n0) {
            case 1: sparse_rows<1>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            case 2: sparse_rows<2>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            case 3: sparse_rows<3>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            case 4: sparse_rows<4>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            case 5: sparse_rows<5>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            case 6: sparse_rows<6>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            case 7: sparse_rows<7>(row_ptr, gaps, values, r, cb, xt, batch, n0, rows, y); break;
            default: break;
        }
    }
}

// One layer and direction of a recurrent network, the whole time loop here (a Python step loop cost ~0.3 ms a
// step, 3x a dense nn.LSTM at hidden 256). gi: the input projections of every step (steps x batch x gates,
// b_ih included); each step's hidden projection is the palettized GEMV of h (+ b_hh), then the gate arithmetic
// of PyTorch's documented equations, elementwise. mode: 0 LSTM (gates i, f, g, o), 1 GRU (r, z, n),
// 2 RNN tanh, 3 RNN relu. h and c (LSTM only) hold the initial state and are updated in place; out (steps x
// batch x hidden) gets every step's h, at its time index (reverse: the last step first).
void wz_rnn(int mode, int64_t steps, int64_t batch, int64_t hidden, const float* gi, const uint8_t* packed,
            int64_t stride, int bits, const float* codebook, int k, int64_t rows_per_group, const int32_t* col_offsets,
            const float* b_hh, float* h, float* c, float* out, int reverse, int threads, int simd) {
    const int64_t gates = (mode == 0 ? 4 : mode == 1 ? 3 : 1) * hidden;
    std::vector<float> gh(batch * gates);
    auto sigmoid = [](float v) { return 1.f / (1.f + std::exp(-v)); };
    for (int64_t s = 0; s < steps; ++s) {
        const int64_t t = reverse ? steps - 1 - s : s;
        wz_gemv(packed, stride, bits, gates, hidden, codebook, k, rows_per_group, col_offsets, h, batch, b_hh,
                gh.data(), threads, simd);
        for (int64_t n = 0; n < batch; ++n) {
            const float* a = gi + (t * batch + n) * gates;
            const float* b = gh.data() + n * gates;
            float* hn = h + n * hidden;
            for (int64_t j = 0; j < hidden; ++j) {
                if (mode == 0) {
                    float* cn = c + n * hidden;
                    const float i = sigmoid(a[j] + b[j]), f = sigmoid(a[hidden + j] + b[hidden + j]);
                    const float g = std::tanh(a[2 * hidden + j] + b[2 * hidden + j]);
                    const float o = sigmoid(a[3 * hidden + j] + b[3 * hidden + j]);
                    cn[j] = f * cn[j] + i * g;
                    hn[j] = o * std::tanh(cn[j]);
                } else if (mode == 1) {
                    const float r = sigmoid(a[j] + b[j]), z = sigmoid(a[hidden + j] + b[hidden + j]);
                    const float m = std::tanh(a[2 * hidden + j] + r * b[2 * hidden + j]);
                    hn[j] = (1.f - z) * m + z * hn[j];
                } else {
                    const float pre = a[j] + b[j];
                    hn[j] = mode == 2 ? std::tanh(pre) : (pre > 0.f ? pre : 0.f);
                }
            }
            std::memcpy(out + (t * batch + n) * hidden, hn, sizeof(float) * hidden);
        }
    }
}

}  // extern "C"
