#ifndef QTOOL_CMODELKERNELS_H
#define QTOOL_CMODELKERNELS_H

// Element-wise kernels of the language model that need eˣ on every value: written in C so that
// the compiler vectorises them for the project's baseline (Haswell: AVX2 and FMA), with an eˣ to
// float32 accuracy (Cephes' expf, within 2 ulp on [-87.3, 88.7]).

/// x[i] ← exp(x[i] - shift) for n values; returns their sum (float lanes, added up in double).
double qtool_exp_shift_sum(float *x, long n, float shift);

/// The sum of exp(x[i] - shift) over n values, x unchanged.
double qtool_sum_exp_shift(const float *x, long n, float shift);

/// gate[i] ← silu(gate[i]) · up[i] = gate[i] / (1 + exp(-gate[i])) · up[i].
void qtool_silu_gate(float *gate, const float *up, long n);

/// With h = silu(gate)·up: dgate[i] ← dh[i]·up[i]·σ(g)(1 + g(1 − σ(g))), dup[i] ← dh[i]·silu(g).
void qtool_silu_gate_backward(const float *dh, const float *gate, const float *up, long n, float *dgate, float *dup);

/// The largest of n values (n > 0).
float qtool_max(const float *x, long n);

#endif
