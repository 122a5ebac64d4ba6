#ifndef QTOOL_CBLASKERNEL_H
#define QTOOL_CBLASKERNEL_H

// The CPU's instruction sets (cpuid, and xgetbv for the register state the OS saves), and the
// OpenBLAS kernel chosen from them. OpenBLAS picks its kernel in its own constructor, before
// `main`; Debian's 0.3.21 does not know newer CPUs and falls back to a generic kernel (Prescott).
// A constructor here runs after OpenBLAS's (a library initialises before the code that links
// it), checks the choice against the CPU and, where a better kernel fits, switches to it.

/// What the CPU offers and the OS enables: a feature counts only when both hold.
struct qtool_cpu_features {
    char vendor[13];
    char brand[49];
    int sse42, avx, avx2, fma, f16c;
    int avx512f, avx512cd, avx512bw, avx512dq, avx512vl, avx512bf16;
};

/// Reads the features of the CPU this runs on.
void qtool_cpu_read(struct qtool_cpu_features *features);

/// How the kernel in use was chosen.
enum {
    QTOOL_KERNEL_OPENBLAS = 0,  // OpenBLAS's own choice fits the CPU and was kept
    QTOOL_KERNEL_SWITCHED = 1,  // qtool switched to the kernel that fits the CPU
    QTOOL_KERNEL_USER = 2,      // the user's OPENBLAS_CORETYPE, honoured as it is
    QTOOL_KERNEL_FIXED = 3,     // this OpenBLAS has one kernel (not built with DYNAMIC_ARCH)
};
int qtool_blas_kernel_source(void);
/// The kernel OpenBLAS chose by itself at load (before any switch).
const char *qtool_blas_kernel_at_load(void);
/// The kernel in use now.
const char *qtool_blas_kernel(void);
/// OpenBLAS's configuration line ("OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY ...").
const char *qtool_blas_config(void);

#endif
