#define _GNU_SOURCE
#include "CBLASKernel.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

// OpenBLAS's public calls; the two of its dynamic-arch loader (exported by every DYNAMIC_ARCH
// build, absent from a single-kernel build); and the stop of its thread pool (exported by the
// pthreads build, which its own fork handler uses). Weak, so any build still links.
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);
extern void openblas_set_num_threads(int);
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));
extern int blas_thread_shutdown_(void) __attribute__((weak));

void qtool_cpu_read(struct qtool_cpu_features *f) {
    memset(f, 0, sizeof *f);
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    unsigned maxLeaf = a;
    memcpy(f->vendor, &b, 4);
    memcpy(f->vendor + 4, &d, 4);
    memcpy(f->vendor + 8, &c, 4);
    if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
        unsigned *brand = (unsigned *)f->brand;
        for (unsigned leaf = 0; leaf < 3; leaf++)
            __get_cpuid(0x80000002 + leaf, &brand[leaf * 4], &brand[leaf * 4 + 1], &brand[leaf * 4 + 2], &brand[leaf * 4 + 3]);
        f->brand[48] = 0;
    }
    __get_cpuid(1, &a, &b, &c, &d);
    int osxsave = (c >> 27) & 1;
    f->sse42 = (c >> 20) & 1;
    // The OS must save the wide registers on a context switch (XCR0): SSE and AVX state for
    // 256-bit code, and the opmask and both halves of the ZMM state for AVX-512.
    uint64_t xcr0 = 0;
    if (osxsave) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = ((uint64_t)hi << 32) | lo;
    }
    int ymm = (xcr0 & 0x6) == 0x6;
    int zmm = ymm && (xcr0 & 0xe0) == 0xe0;
    f->avx = ymm && ((c >> 28) & 1);
    f->fma = f->avx && ((c >> 12) & 1);
    f->f16c = f->avx && ((c >> 29) & 1);
    if (maxLeaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f->avx2 = f->avx && ((b >> 5) & 1);
        f->avx512f = zmm && ((b >> 16) & 1);
        f->avx512dq = f->avx512f && ((b >> 17) & 1);
        f->avx512cd = f->avx512f && ((b >> 28) & 1);
        f->avx512bw = f->avx512f && ((b >> 30) & 1);
        f->avx512vl = f->avx512f && ((b >> 31) & 1);
        unsigned subleaves = a;
        if (subleaves >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            f->avx512bf16 = f->avx512f && ((a >> 5) & 1);
        }
    }
#endif
}

// Instruction-set tiers of OpenBLAS 0.3.x's x86-64 kernels: 3 AVX-512, 2 AVX2+FMA, 1 AVX,
// 0 anything older (Prescott, Core2, Nehalem, ...).
static int tier_of_kernel(const char *name) {
    static const char *const avx512[] = {"skylakex", "cooperlake", "sapphirerapids"};
    static const char *const avx2[] = {"haswell", "zen", "excavator"};
    static const char *const avx[] = {"sandybridge", "bulldozer", "piledriver", "steamroller"};
    for (size_t i = 0; i < sizeof avx512 / sizeof *avx512; i++)
        if (strcasecmp(name, avx512[i]) == 0) return 3;
    for (size_t i = 0; i < sizeof avx2 / sizeof *avx2; i++)
        if (strcasecmp(name, avx2[i]) == 0) return 2;
    for (size_t i = 0; i < sizeof avx / sizeof *avx; i++)
        if (strcasecmp(name, avx[i]) == 0) return 1;
    return 0;
}

extern char **environ;

static char kernel_at_load[32];
static int kernel_source = QTOOL_KERNEL_OPENBLAS;

__attribute__((constructor)) static void qtool_choose_blas_kernel(void) {
    // The threading rule lives in the Swift BLAS layer; OpenBLAS itself never splits a call.
    // Its thread pool, started by its own constructor unless OPENBLAS_NUM_THREADS=1, is stopped:
    // qtool never hands it work, its threads spin for a while after start, and the reload below
    // is not safe while they run (a race that crashed about one start in thirty).
    openblas_set_num_threads(1);
    if (blas_thread_shutdown_) blas_thread_shutdown_();
    strncpy(kernel_at_load, openblas_get_corename(), sizeof kernel_at_load - 1);
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (user && *user) {
        kernel_source = QTOOL_KERNEL_USER;
        return;
    }
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit) {
        kernel_source = QTOOL_KERNEL_FIXED;
        return;
    }
    struct qtool_cpu_features f;
    qtool_cpu_read(&f);
    const char *fits = NULL;
    int tier = 0;
    if (f.avx512f && f.avx512cd && f.avx512bw && f.avx512dq && f.avx512vl) {
        fits = f.avx512bf16 ? "Cooperlake" : "SkylakeX";
        tier = 3;
    } else if (f.avx2 && f.fma) {
        int amd = strcmp(f.vendor, "AuthenticAMD") == 0 || strcmp(f.vendor, "HygonGenuine") == 0;
        fits = amd ? "Zen" : "Haswell";
        tier = 2;
    }
    if (!fits || tier_of_kernel(kernel_at_load) >= tier) return;
    // OpenBLAS's loader reads OPENBLAS_CORETYPE; set it for the reload only. This runs before
    // main, on the only thread left (the pool is stopped above). setenv moves `environ` to a
    // new array, and the Swift runtime finds argv by walking back from `environ` (in a static
    // binary its constructor may run after this one), so the original array is put back.
    char **original = environ;
    setenv("OPENBLAS_CORETYPE", fits, 1);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
    environ = original;
    kernel_source = QTOOL_KERNEL_SWITCHED;
}

int qtool_blas_kernel_source(void) { return kernel_source; }
const char *qtool_blas_kernel_at_load(void) { return kernel_at_load; }
const char *qtool_blas_kernel(void) { return openblas_get_corename(); }
const char *qtool_blas_config(void) { return openblas_get_config(); }
