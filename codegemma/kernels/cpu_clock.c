/* The clock this core runs at, measured: a chain of dependent integer additions, each of which
 * takes exactly one cycle on every x86-64 and AArch64 core, so cycles = additions. Virtual machines
 * often hide the maximum clock (no cpufreq in sysfs) and report a nominal one, which CPU MFU used to
 * take as the peak's clock; a core boosting above it then showed more than its FMA units can do.
 * Returns 0 where the chain cannot be written (other architectures). */
#include <stdint.h>
#include <time.h>

#if defined(__x86_64__)
#define ADD8(x) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t" \
                                 "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x))
#elif defined(__aarch64__)
#define ADD8(x) __asm__ volatile("add %0, %0, #1\n\tadd %0, %0, #1\n\tadd %0, %0, #1\n\tadd %0, %0, #1\n\t" \
                                 "add %0, %0, #1\n\tadd %0, %0, #1\n\tadd %0, %0, #1\n\tadd %0, %0, #1" : "+r"(x))
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* cycles per second over at least `additions` dependent additions, 32 per pass of the loop (whose own
 * counter and branch run beside the chain) */
double cpu_clock_hz(int64_t additions) {
#ifdef ADD8
    uint64_t x = 0;
    const double start = now();
    for (int64_t i = 0; i < additions; i += 32) {
        ADD8(x);
        ADD8(x);
        ADD8(x);
        ADD8(x);
    }
    const double seconds = now() - start;
    return seconds > 0 ? (double)x / seconds : 0.0;
#else
    (void)additions;
    return 0.0;
#endif
}
