#ifndef QTOOL_CQUANTKERNEL_H
#define QTOOL_CQUANTKERNEL_H

#include <stddef.h>
#include <stdint.h>

// The 4-bit quantizer's block kernel for AVX-512 CPUs, called only after the caller has checked
// that the CPU and the OS run AVX-512 F/BW/VL/DQ (it is compiled for them function by function;
// the rest of qtool targets Haswell).
//
// A scaled value v (in [-1, 1]) is placed in one of 32 cells, cell(v) = clamp(trunc(16 v + 16),
// 0, 31), computed with one fused multiply-add. cell() never decreases as v grows, so every
// midpoint in an earlier cell is below v and every midpoint in a later cell is above it: the
// count of midpoints below v is `below[cell] + (v > midpoint[cell])`, where a cell holds at most
// one midpoint (+infinity when it holds none). The caller builds the tables from the midpoints
// and checks that condition; the count is the bucket of bitsandbytes' bucketize, bit for bit.
struct qtool_q4_tables {
    int32_t below[32];
    float midpoint[32];
    /// `order[bucket]` is the code written (FP4's reordering; identity for NF4).
    int32_t order[16];
    int32_t reorder;
};

/// Quantizes `blocks` full blocks of `blocksize` (a multiple of 32) values read in place: f32
/// when `bf16` is 0, bf16 otherwise. Writes `blocksize / 2` bytes of codes (high nibble first)
/// and one absmax a block, scaling by the float32 reciprocal of max(absmax, 1e-38) as
/// bitsandbytes does. A block holding NaN or infinity is left unwritten and its scale set to NaN.
/// Returns the number of such blocks.
size_t qtool_q4_quantize_avx512(const void *source, int bf16, size_t blocks, size_t blocksize,
                                const struct qtool_q4_tables *tables, uint8_t *codes, float *scales);

#endif
