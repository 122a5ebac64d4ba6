#include "CModelKernels.h"

#include <stdint.h>
#include <string.h>

#define BASELINE __attribute__((target("avx2,fma")))

// Cephes' expf without branches: k = round(x / ln 2) by adding and taking away 1.5·2²³ (whose
// bits then hold k), r = x - k·ln 2 with ln 2 in two parts, a degree-6 polynomial for eʳ, and
// 2ᵏ from the exponent bits as two factors (k = 128 must not overflow one). Inputs are clamped
// to [-87.34, 88.72]: below, the result is about 1e-38 instead of smaller.
BASELINE static inline float exp_approx(float x) {
    x = x < -87.336548f ? -87.336548f : x;
    x = x > 88.722839f ? 88.722839f : x;
    float t = x * 1.44269504f + 12582912.0f;
    float k = t - 12582912.0f;
    int32_t e;
    memcpy(&e, &t, 4);
    e -= 0x4B400000;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691e-4f;
    p = p * r + 1.3981999e-3f;
    p = p * r + 8.3334519e-3f;
    p = p * r + 4.1665796e-2f;
    p = p * r + 1.6666665e-1f;
    p = p * r + 5.0000001e-1f;
    float y = p * (r * r) + r + 1.0f;
    int32_t half = e >> 1;
    int32_t a_bits = (half + 127) << 23, b_bits = (e - half + 127) << 23;
    float a, b;
    memcpy(&a, &a_bits, 4);
    memcpy(&b, &b_bits, 4);
    return y * a * b;
}

BASELINE double qtool_exp_shift_sum(float *x, long n, float shift) {
    float lanes[16] = {0};
    long i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            float e = exp_approx(x[i + j] - shift);
            x[i + j] = e;
            lanes[j] += e;
        }
    double total = 0;
    for (int j = 0; j < 16; j++) total += lanes[j];
    for (; i < n; i++) {
        float e = exp_approx(x[i] - shift);
        x[i] = e;
        total += e;
    }
    return total;
}

BASELINE double qtool_sum_exp_shift(const float *x, long n, float shift) {
    float lanes[16] = {0};
    long i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lanes[j] += exp_approx(x[i + j] - shift);
    double total = 0;
    for (int j = 0; j < 16; j++) total += lanes[j];
    for (; i < n; i++) total += exp_approx(x[i] - shift);
    return total;
}

BASELINE void qtool_silu_gate(float *gate, const float *up, long n) {
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + exp_approx(-g)) * up[i];
    }
}

BASELINE float qtool_max(const float *x, long n) {
    float lanes[16];
    long i = 0;
    for (int j = 0; j < 16; j++) lanes[j] = x[0];
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
    float m = lanes[0];
    for (int j = 1; j < 16; j++) m = lanes[j] > m ? lanes[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

BASELINE void qtool_silu_gate_backward(const float *dh, const float *gate, const float *up, long n, float *dgate, float *dup) {
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        float sigma = 1.0f / (1.0f + exp_approx(-g));
        float silu = g * sigma;
        dgate[i] = dh[i] * up[i] * sigma * (1.0f + g * (1.0f - sigma));
        dup[i] = dh[i] * silu;
    }
}
