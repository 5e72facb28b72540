/* SHA-256d nonce scanning kernels: portable scalar C, multi-lane SIMD (SSE2/AVX2/AVX-512 on
 * x86-64, NEON on AArch64 and 32-bit ARM) and the SHA-256 instructions of x86-64 (SHA-NI) and
 * ARMv8 (AArch64, and AArch32 on an ARMv8 core running a 32-bit system).
 *
 * Built without -march: every x86 kernel carries its own target attribute and is only used when
 * CPUID (and the OS, for the AVX register state) says so, so a build from one x86-64 machine runs
 * on any other. ARM works the same way with the hardware capabilities the kernel reports
 * (getauxval: HWCAP_SHA2 on AArch64; HWCAP_ARM_NEON and HWCAP2_SHA2 on 32-bit ARM), so an armv7
 * build runs on a Cortex-A9 with NEON and on a NEON-less core alike. Other CPUs compile only the
 * scalar kernel. -DGM_PORTABLE_ONLY gives a build the kernels of an unknown CPU (scalar only), to
 * test that path.
 */
#include "sha256d_kernels.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(GM_PORTABLE_ONLY)
#define GM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#if defined(__aarch64__) && defined(__GNUC__) && !defined(GM_PORTABLE_ONLY)
#define GM_NEON 1
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#endif

/* 32-bit ARM (armv7 and ARMv8 cores in AArch32) with a hardware FPU, on Linux: NEON is optional
 * there, so the NEON code lives in functions of its own, used only where AT_HWCAP says so. */
#if defined(__arm__) && defined(__ARM_FP) && defined(__GNUC__) && defined(__linux__) &&          \
    !defined(GM_PORTABLE_ONLY)
#define GM_ARM32 1
#if !defined(__clang__) || defined(__ARM_NEON) /* clang's arm_neon.h wants NEON in the whole build */
#include <arm_neon.h>
#endif
#include <sys/auxv.h>
#define GM_ARM32_HWCAP_NEON (1ul << 12)  /* HWCAP_ARM_NEON, Linux arch/arm uapi asm/hwcap.h */
#define GM_ARM32_HWCAP2_SHA2 (1ul << 3)  /* HWCAP2_SHA2, same header */
#if !defined(__clang__)
#define GM_ARM32_NEON 1
#define GM_ARM32_NEON_ATTR __attribute__((target("fpu=neon")))
#elif defined(__ARM_NEON)
#define GM_ARM32_NEON 1 /* the whole build targets NEON (then so may the scalar code) */
#define GM_ARM32_NEON_ATTR
#else
/* clang has no function attribute that enables NEON code generation on 32-bit ARM */
#define GM_OMIT_NEON "neon: clang emits NEON code on 32-bit ARM only when the whole build targets it"
#endif
#endif

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t IV256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* Work on uint32_t and on GCC/clang vectors of uint32_t alike (a scalar operand broadcasts). */
#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BS0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BS1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SS0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SS1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

static inline uint32_t bswap32(uint32_t x)
{
    return (x << 24) | ((x << 8) & 0x00ff0000u) | ((x >> 8) & 0x0000ff00u) | (x >> 24);
}

static inline uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* `rounds` rounds (64 for a full block) of the compression function on `state`, then, for a full
 * block, the feed-forward. w[16] is the message block as big-endian words. */
static void sha256_rounds(uint32_t state[8], const uint32_t block[16], int rounds)
{
    uint32_t w[64];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    int i;

    for (i = 0; i < 16; i++) w[i] = block[i];
    for (i = 16; i < 64; i++) w[i] = SS1(w[i - 2]) + w[i - 7] + SS0(w[i - 15]) + w[i - 16];
    for (i = 0; i < rounds; i++) {
        uint32_t t1 = h + BS1(e) + CH(e, f, g) + K256[i] + w[i];
        uint32_t t2 = BS0(a) + MAJ(a, b, c);
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    if (rounds == 64) {
        a += state[0]; b += state[1]; c += state[2]; d += state[3];
        e += state[4]; f += state[5]; g += state[6]; h += state[7];
    }
    state[0] = a; state[1] = b; state[2] = c; state[3] = d;
    state[4] = e; state[5] = f; state[6] = g; state[7] = h;
}

void sha256d_job_init(sha256d_job *job, const unsigned char header[80], const uint32_t target[8])
{
    uint32_t block[16];
    int i;

    for (i = 0; i < 16; i++) block[i] = be32(header + 4 * i);
    memcpy(job->mid, IV256, sizeof job->mid);
    sha256_rounds(job->mid, block, 64);
    for (i = 0; i < 3; i++) job->w[i] = be32(header + 64 + 4 * i);
    memset(block, 0, sizeof block);
    memcpy(block, job->w, sizeof job->w);
    memcpy(job->pre2, job->mid, sizeof job->pre2);
    sha256_rounds(job->pre2, block, 2);
    memcpy(job->pre3, job->mid, sizeof job->pre3);
    sha256_rounds(job->pre3, block, 3);
    memcpy(job->target, target, sizeof job->target);
}

/* The whole double hash of one nonce and the 256-bit comparison: run for the rare candidates whose
 * most significant word already passed. */
static int full_check(const sha256d_job *job, uint32_t nonce)
{
    uint32_t block[16] = {0};
    uint32_t state[8];
    int i;

    memcpy(block, job->w, sizeof job->w);
    block[3] = bswap32(nonce);
    block[4] = 0x80000000u;
    block[15] = 640;
    memcpy(state, job->mid, sizeof state);
    sha256_rounds(state, block, 64);
    memcpy(block, state, sizeof state);
    block[8] = 0x80000000u;
    for (i = 9; i < 15; i++) block[i] = 0;
    block[15] = 256;
    memcpy(state, IV256, sizeof state);
    sha256_rounds(state, block, 64);
    /* digest bytes 4i..4i+3 are state[i] big-endian; as a little-endian number that word is
     * bswap32(state[i]), and word 7 is the most significant */
    for (i = 7; i >= 0; i--) {
        uint32_t v = bswap32(state[i]);
        if (v != job->target[i]) return v < job->target[i];
    }
    return 1;
}

/* ---- portable kernels ---------------------------------------------------------------------- */

#define LANES_T uint32_t
#define LANES_N 1
#define LANES_INDEX ((uint32_t)0)
#define LANES_FN scan_scalar
#define LANES_ATTR
#include "sha256d_lanes.h"
#undef LANES_T
#undef LANES_N
#undef LANES_INDEX
#undef LANES_FN
#undef LANES_ATTR

#if defined(GM_X86) || defined(GM_NEON) || defined(GM_ARM32_NEON)
typedef uint32_t gm_v4u __attribute__((vector_size(16)));
#define LANES_T gm_v4u
#define LANES_N 4
#define LANES_INDEX ((gm_v4u){0, 1, 2, 3})
#define LANES_FN scan_simd128
#ifdef GM_ARM32_NEON
#define LANES_ATTR GM_ARM32_NEON_ATTR
#else
#define LANES_ATTR
#endif
#include "sha256d_lanes.h"
#undef LANES_T
#undef LANES_N
#undef LANES_INDEX
#undef LANES_FN
#undef LANES_ATTR
#endif

/* ---- x86-64: AVX2, AVX-512, SHA extensions -------------------------------------------------- */

#ifdef GM_X86
typedef uint32_t gm_v8u __attribute__((vector_size(32)));
#define LANES_T gm_v8u
#define LANES_N 8
#define LANES_INDEX ((gm_v8u){0, 1, 2, 3, 4, 5, 6, 7})
#define LANES_FN scan_avx2
#define LANES_ATTR __attribute__((target("avx2")))
#include "sha256d_lanes.h"
#undef LANES_T
#undef LANES_N
#undef LANES_INDEX
#undef LANES_FN
#undef LANES_ATTR

typedef uint32_t gm_v16u __attribute__((vector_size(64)));
#define LANES_T gm_v16u
#define LANES_N 16
#define LANES_INDEX ((gm_v16u){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
#define LANES_FN scan_avx512
#define LANES_ATTR __attribute__((target("avx512f")))
#include "sha256d_lanes.h"
#undef LANES_T
#undef LANES_N
#undef LANES_INDEX
#undef LANES_FN
#undef LANES_ATTR

/* SHA extensions: the state lives in two registers, ABEF and CDGH (A in the top dword), and one
 * sha256rnds2 does two rounds. Independent nonces are interleaved to hide its latency. */
#ifndef GM_SHANI_STREAMS
#define GM_SHANI_STREAMS 3
#endif
#define SN_ATTR __attribute__((target("sha,sse4.1,ssse3")))
#define SN_INLINE static inline __attribute__((always_inline)) SN_ATTR
#define SN_FOR(n) for (s = 0; s < (n); s++)

typedef struct shani_consts {
    __m128i pre_abef, pre_cdgh; /* state after rounds 0..1 of the first hash's second block */
    __m128i mid_abef, mid_cdgh; /* midstate, for the feed-forward */
    __m128i iv_abef, iv_cdgh;
    __m128i msg0;               /* words 0..2 of the second block, nonce slot zero */
    __m128i k[16];              /* K256 in groups of four */
    __m128i wk1a, wk2a, wk3a;   /* first hash: W+K of rounds 4..15 (padding only) */
    __m128i m1a, m2a, m3a;      /* first hash: words 4..15 */
    __m128i wk2b, wk3b;         /* second hash: W+K of rounds 8..15 */
    __m128i m2b, m3b;           /* second hash: words 8..15 */
} shani_consts;

SN_INLINE __m128i sn_abef(const uint32_t *st)
{
    return _mm_set_epi32((int)st[0], (int)st[1], (int)st[4], (int)st[5]);
}

SN_INLINE __m128i sn_cdgh(const uint32_t *st)
{
    return _mm_set_epi32((int)st[2], (int)st[3], (int)st[6], (int)st[7]);
}

/* four rounds: abef/cdgh stay in their roles */
SN_INLINE void sn_rounds4(__m128i *abef, __m128i *cdgh, __m128i wk)
{
    *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, wk);
    *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(wk, 0x0E));
}

/* W[i..i+3] from W[i-16..i-1] held in m0..m3 */
SN_INLINE __m128i sn_next(__m128i m0, __m128i m1, __m128i m2, __m128i m3)
{
    __m128i x = _mm_add_epi32(_mm_sha256msg1_epu32(m0, m1), _mm_alignr_epi8(m3, m2, 4));
    return _mm_sha256msg2_epu32(x, m3);
}

SN_ATTR static void sn_consts_init(shani_consts *kc, const sha256d_job *job)
{
    int i;

    kc->pre_abef = sn_abef(job->pre2);
    kc->pre_cdgh = sn_cdgh(job->pre2);
    kc->mid_abef = sn_abef(job->mid);
    kc->mid_cdgh = sn_cdgh(job->mid);
    kc->iv_abef = sn_abef(IV256);
    kc->iv_cdgh = sn_cdgh(IV256);
    kc->msg0 = _mm_set_epi32(0, (int)job->w[2], (int)job->w[1], (int)job->w[0]);
    for (i = 0; i < 16; i++) kc->k[i] = _mm_loadu_si128((const __m128i *)(K256 + 4 * i));
    kc->m1a = _mm_set_epi32(0, 0, 0, (int)0x80000000u);
    kc->m2a = _mm_setzero_si128();
    kc->m3a = _mm_set_epi32(640, 0, 0, 0);
    kc->wk1a = _mm_add_epi32(kc->m1a, kc->k[1]);
    kc->wk2a = _mm_add_epi32(kc->m2a, kc->k[2]);
    kc->wk3a = _mm_add_epi32(kc->m3a, kc->k[3]);
    kc->m2b = _mm_set_epi32(0, 0, 0, (int)0x80000000u);
    kc->m3b = _mm_set_epi32(256, 0, 0, 0);
    kc->wk2b = _mm_add_epi32(kc->m2b, kc->k[2]);
    kc->wk3b = _mm_add_epi32(kc->m3b, kc->k[3]);
}

/* four rounds of group g >= 4: next message words, then the rounds; message registers rotate */
#define SN_SCHED(kc, n, ma, mb, mc, md, g)                                  \
    SN_FOR(n) {                                                             \
        ma[s] = sn_next(ma[s], mb[s], mc[s], md[s]);                        \
        sn_rounds4(&abef[s], &cdgh[s], _mm_add_epi32(ma[s], (kc)->k[g]));   \
    }

/* Double hash of nonces nonce0 .. nonce0+n-1; h7[s] receives H7 of the second hash.
 * (Interleaving this with the AVX-512 lanes in one loop was measured on Zen 4: no gain, the SHA
 * instructions compete with the vector ALUs.) */
SN_INLINE void sn_batch(const shani_consts *kc, uint32_t nonce0, int n, uint32_t *h7)
{
    __m128i abef[4], cdgh[4], m0[4], m1[4], m2[4], m3[4];
    int s;

    /* first hash, second block: rounds 0..1 are precomputed, the nonce is word 3 */
    SN_FOR(n) {
        __m128i wk, t;
        m0[s] = _mm_insert_epi32(kc->msg0, (int)bswap32(nonce0 + (uint32_t)s), 3);
        wk = _mm_shuffle_epi32(_mm_add_epi32(m0[s], kc->k[0]), 0x0E);
        t = _mm_sha256rnds2_epu32(kc->pre_cdgh, kc->pre_abef, wk);
        cdgh[s] = kc->pre_abef;
        abef[s] = t;
        m1[s] = kc->m1a;
        m2[s] = kc->m2a;
        m3[s] = kc->m3a;
    }
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], kc->wk1a);
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], kc->wk2a);
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], kc->wk3a);
    SN_SCHED(kc, n, m0, m1, m2, m3, 4)
    SN_SCHED(kc, n, m1, m2, m3, m0, 5)
    SN_SCHED(kc, n, m2, m3, m0, m1, 6)
    SN_SCHED(kc, n, m3, m0, m1, m2, 7)
    SN_SCHED(kc, n, m0, m1, m2, m3, 8)
    SN_SCHED(kc, n, m1, m2, m3, m0, 9)
    SN_SCHED(kc, n, m2, m3, m0, m1, 10)
    SN_SCHED(kc, n, m3, m0, m1, m2, 11)
    SN_SCHED(kc, n, m0, m1, m2, m3, 12)
    SN_SCHED(kc, n, m1, m2, m3, m0, 13)
    SN_SCHED(kc, n, m2, m3, m0, m1, 14)
    SN_SCHED(kc, n, m3, m0, m1, m2, 15)

    /* feed-forward; the digest words become the second hash's words 0..7 (no byte swap) */
    SN_FOR(n) {
        __m128i x = _mm_shuffle_epi32(_mm_add_epi32(abef[s], kc->mid_abef), 0x1B);
        __m128i y = _mm_shuffle_epi32(_mm_add_epi32(cdgh[s], kc->mid_cdgh), 0xB1);
        m0[s] = _mm_blend_epi16(x, y, 0xF0); /* H0 H1 H2 H3 */
        m1[s] = _mm_alignr_epi8(y, x, 8);    /* H4 H5 H6 H7 */
        m2[s] = kc->m2b;
        m3[s] = kc->m3b;
        abef[s] = kc->iv_abef;
        cdgh[s] = kc->iv_cdgh;
    }
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], _mm_add_epi32(m0[s], kc->k[0]));
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], _mm_add_epi32(m1[s], kc->k[1]));
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], kc->wk2b);
    SN_FOR(n) sn_rounds4(&abef[s], &cdgh[s], kc->wk3b);
    SN_SCHED(kc, n, m0, m1, m2, m3, 4)
    SN_SCHED(kc, n, m1, m2, m3, m0, 5)
    SN_SCHED(kc, n, m2, m3, m0, m1, 6)
    SN_SCHED(kc, n, m3, m0, m1, m2, 7)
    SN_SCHED(kc, n, m0, m1, m2, m3, 8)
    SN_SCHED(kc, n, m1, m2, m3, m0, 9)
    SN_SCHED(kc, n, m2, m3, m0, m1, 10)
    SN_SCHED(kc, n, m3, m0, m1, m2, 11)
    SN_SCHED(kc, n, m0, m1, m2, m3, 12)
    SN_SCHED(kc, n, m1, m2, m3, m0, 13)
    SN_SCHED(kc, n, m2, m3, m0, m1, 14)
    /* rounds 60..61 only: F of ABEF after 62 rounds is e after 61 rounds, i.e. the final H */
    SN_FOR(n) {
        __m128i wk, t;
        m3[s] = sn_next(m3[s], m0[s], m1[s], m2[s]);
        wk = _mm_add_epi32(m3[s], kc->k[15]);
        t = _mm_sha256rnds2_epu32(cdgh[s], abef[s], wk);
        h7[s] = (uint32_t)_mm_cvtsi128_si32(t) + IV256[7];
    }
}

SN_ATTR static size_t scan_shani(const sha256d_job *job, uint32_t start, uint64_t count,
                                 uint32_t *out)
{
    const uint64_t end = (uint64_t)start + count;
    const uint32_t t7 = job->target[7];
    shani_consts kc;
    size_t found = 0;
    uint64_t base;

    sn_consts_init(&kc, job);
    for (base = start; base < end; base += GM_SHANI_STREAMS) {
        uint32_t h7[GM_SHANI_STREAMS];
        int s;

        sn_batch(&kc, (uint32_t)base, GM_SHANI_STREAMS, h7);
        for (s = 0; s < GM_SHANI_STREAMS; s++) {
            uint64_t n = base + (uint64_t)s;
            if (n < end && bswap32(h7[s]) <= t7 && full_check(job, (uint32_t)n)) {
                out[found++] = (uint32_t)n;
            }
        }
    }
    return found;
}


/* ---- runtime CPU detection ------------------------------------------------------------------- */

static uint64_t gm_xcr0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

#define GM_CPU_SSSE3 1u
#define GM_CPU_SSE41 2u
#define GM_CPU_SHA 4u
#define GM_CPU_AVX2 8u
#define GM_CPU_AVX512F 16u

static unsigned gm_cpu_features(void)
{
    static int done = 0;
    static unsigned features = 0;
    unsigned a, b, c, d, f = 0;
    int ymm = 0, zmm = 0;

    if (done) return features;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        if (c & (1u << 9)) f |= GM_CPU_SSSE3;
        if (c & (1u << 19)) f |= GM_CPU_SSE41;
        if (c & (1u << 27)) { /* OSXSAVE: the OS saves the wide registers we may use */
            uint64_t xcr0 = gm_xcr0();
            ymm = (xcr0 & 0x6) == 0x6;
            zmm = (xcr0 & 0xe6) == 0xe6;
        }
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 29)) f |= GM_CPU_SHA;
        if ((b & (1u << 5)) && ymm) f |= GM_CPU_AVX2;
        if ((b & (1u << 16)) && zmm) f |= GM_CPU_AVX512F;
    }
    features = f;
    done = 1;
    return features;
}

static int usable_shani(void)
{
    const unsigned need = GM_CPU_SHA | GM_CPU_SSE41 | GM_CPU_SSSE3;
    return (gm_cpu_features() & need) == need;
}

static int usable_avx2(void) { return (gm_cpu_features() & GM_CPU_AVX2) != 0; }

static int usable_avx512(void) { return (gm_cpu_features() & GM_CPU_AVX512F) != 0; }

#endif /* GM_X86 */


/* ---- ARMv8 SHA-256 instructions (AArch64, and AArch32 on ARMv8 cores) ----------------------- */

#if defined(GM_NEON) && !defined(__clang__)
#define GM_ARMV8_SHA2 1
#define A8_ATTR __attribute__((target("+crypto")))
#elif defined(GM_ARM32) && !defined(__clang__)
#define GM_ARMV8_SHA2 1
#define A8_ATTR __attribute__((target("arch=armv8-a+crypto")))
#elif (defined(GM_NEON) || defined(GM_ARM32)) && defined(__ARM_FEATURE_SHA2)
#define GM_ARMV8_SHA2 1 /* clang: only where the default target has it (Apple arm64) */
#define A8_ATTR
#elif defined(GM_NEON) || defined(GM_ARM32)
/* clang's arm_neon.h declares the SHA-2 intrinsics only when the whole file is built for them */
#define GM_OMIT_SHA2 "armv8-sha2: clang declares the SHA-2 intrinsics only when the whole build " \
                     "targets them (CFLAGS=-march=armv8-a+crypto)"
#endif

#ifdef GM_ARMV8_SHA2
/* The state lives in two registers, ABCD and EFGH (A and E in lane 0); one sha256h/sha256h2 pair
 * does four rounds. Two nonces are interleaved to hide the latency. */
#define A8_STREAMS 2
#define A8_INLINE static inline __attribute__((always_inline)) A8_ATTR

A8_INLINE void a8_rounds4(uint32x4_t *abcd, uint32x4_t *efgh, uint32x4_t wk)
{
    uint32x4_t prev = *abcd;
    *abcd = vsha256hq_u32(*abcd, *efgh, wk);
    *efgh = vsha256h2q_u32(*efgh, prev, wk);
}

/* W[i..i+3] from W[i-16..i-1] */
A8_INLINE uint32x4_t a8_next(uint32x4_t m0, uint32x4_t m1, uint32x4_t m2, uint32x4_t m3)
{
    return vsha256su1q_u32(vsha256su0q_u32(m0, m1), m2, m3);
}

/* 64 rounds from `init`: message m0..m3 (W0 in lane 0 of m0); feed-forward left to the caller */
#define A8_BLOCK(init_abcd, init_efgh)                                                  \
    do {                                                                                \
        int g_;                                                                         \
        for (s = 0; s < A8_STREAMS; s++) {                                              \
            abcd[s] = (init_abcd);                                                      \
            efgh[s] = (init_efgh);                                                      \
        }                                                                               \
        for (g_ = 0; g_ < 16; g_++) {                                                   \
            for (s = 0; s < A8_STREAMS; s++) {                                          \
                uint32x4_t *mg = &m[g_ & 3][s];                                         \
                if (g_ >= 4)                                                            \
                    *mg = a8_next(*mg, m[(g_ + 1) & 3][s], m[(g_ + 2) & 3][s],          \
                                  m[(g_ + 3) & 3][s]);                                  \
                a8_rounds4(&abcd[s], &efgh[s], vaddq_u32(*mg, k[g_]));                  \
            }                                                                           \
        }                                                                               \
    } while (0)

A8_ATTR static size_t scan_armv8_sha2(const sha256d_job *job, uint32_t start, uint64_t count,
                                      uint32_t *out)
{
    const uint64_t end = (uint64_t)start + count;
    const uint32_t t7 = job->target[7];
    const uint32x4_t mid_abcd = vld1q_u32(job->mid), mid_efgh = vld1q_u32(job->mid + 4);
    const uint32x4_t iv_abcd = vld1q_u32(IV256), iv_efgh = vld1q_u32(IV256 + 4);
    const uint32_t pad1[4] = {0x80000000u, 0, 0, 0}, len1[4] = {0, 0, 0, 640};
    const uint32_t len2[4] = {0, 0, 0, 256};
    uint32x4_t k[16];
    size_t found = 0;
    uint64_t base;
    int s, g;

    for (g = 0; g < 16; g++) k[g] = vld1q_u32(K256 + 4 * g);
    for (base = start; base < end; base += A8_STREAMS) {
        uint32x4_t abcd[A8_STREAMS], efgh[A8_STREAMS], m[4][A8_STREAMS];
        uint32_t h7[A8_STREAMS];

        /* first hash, second block */
        for (s = 0; s < A8_STREAMS; s++) {
            const uint32_t w0[4] = {job->w[0], job->w[1], job->w[2],
                                    bswap32((uint32_t)base + (uint32_t)s)};
            m[0][s] = vld1q_u32(w0);
            m[1][s] = vld1q_u32(pad1);
            m[2][s] = vdupq_n_u32(0);
            m[3][s] = vld1q_u32(len1);
        }
        A8_BLOCK(mid_abcd, mid_efgh);
        /* second hash: the digest words, padding, length 256 bits */
        for (s = 0; s < A8_STREAMS; s++) {
            m[0][s] = vaddq_u32(abcd[s], mid_abcd);
            m[1][s] = vaddq_u32(efgh[s], mid_efgh);
            m[2][s] = vld1q_u32(pad1);
            m[3][s] = vld1q_u32(len2);
        }
        A8_BLOCK(iv_abcd, iv_efgh);
        for (s = 0; s < A8_STREAMS; s++) h7[s] = vgetq_lane_u32(efgh[s], 3) + IV256[7];
        for (s = 0; s < A8_STREAMS; s++) {
            uint64_t n = base + (uint64_t)s;
            if (n < end && bswap32(h7[s]) <= t7 && full_check(job, (uint32_t)n)) {
                out[found++] = (uint32_t)n;
            }
        }
    }
    return found;
}

static int usable_armv8_sha2(void)
{
#if defined(GM_ARM32)
    return (getauxval(AT_HWCAP) & GM_ARM32_HWCAP_NEON) &&
           (getauxval(AT_HWCAP2) & GM_ARM32_HWCAP2_SHA2);
#elif defined(__linux__) && defined(HWCAP_SHA2)
    return (getauxval(AT_HWCAP) & HWCAP_SHA2) != 0;
#elif defined(__APPLE__)
    return 1; /* every Apple silicon core has the SHA-256 instructions */
#else
    return 0;
#endif
}
#endif /* GM_ARMV8_SHA2 */

static int usable_always(void) { return 1; }

#ifdef GM_ARM32_NEON
static int usable_arm32_neon(void) { return (getauxval(AT_HWCAP) & GM_ARM32_HWCAP_NEON) != 0; }
#endif

static const char OMITTED[] = ""
#ifdef GM_OMIT_SHA2
    GM_OMIT_SHA2 "\n"
#endif
#ifdef GM_OMIT_NEON
    GM_OMIT_NEON "\n"
#endif
    ;

const char *sha256d_kernels_omitted(void) { return OMITTED; }

/* ---- kernel table, widest first: agent._sha256d times the leading ones to pick its default */

static const struct {
    const char *name;
    sha256d_scan_fn fn;
    int (*usable)(void);
} KERNELS[] = {
#ifdef GM_X86
    {"avx512", scan_avx512, usable_avx512},
    {"sha-ni", scan_shani, usable_shani},
    {"avx2", scan_avx2, usable_avx2},
    {"sse2", scan_simd128, usable_always},
#endif
#ifdef GM_ARMV8_SHA2
    {"armv8-sha2", scan_armv8_sha2, usable_armv8_sha2},
#endif
#ifdef GM_NEON
    {"neon", scan_simd128, usable_always},
#endif
#ifdef GM_ARM32_NEON
    {"neon", scan_simd128, usable_arm32_neon},
#endif
    {"scalar", scan_scalar, usable_always},
};

int sha256d_kernel_count(void) { return (int)(sizeof KERNELS / sizeof KERNELS[0]); }

const char *sha256d_kernel_name(int index) { return KERNELS[index].name; }

int sha256d_kernel_usable(int index) { return KERNELS[index].usable(); }

sha256d_scan_fn sha256d_kernel_fn(int index) { return KERNELS[index].fn; }
