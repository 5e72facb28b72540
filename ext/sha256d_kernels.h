/* SHA-256d nonce scanning kernels for agent._sha256d.
 *
 * A job holds everything that does not depend on the nonce: the midstate of the first 64 header
 * bytes, the three fixed words of the second block, the state after the nonce-independent
 * rounds 0..2 of that block, and the target as eight little-endian 32-bit words (target[7] is the
 * most significant). A kernel tries nonces start .. start+count-1 and writes every nonce whose
 * double hash, read as a 256-bit little-endian integer, is <= target, in increasing order.
 */
#ifndef GRIDMINER_SHA256D_KERNELS_H
#define GRIDMINER_SHA256D_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256d_job {
    uint32_t mid[8];    /* SHA-256 state after the first 64 header bytes */
    uint32_t w[3];      /* message words 0..2 of the second block (header bytes 64..75) */
    uint32_t pre2[8];   /* state after rounds 0..1 of the second block */
    uint32_t pre3[8];   /* state after rounds 0..2 of the second block */
    uint32_t target[8]; /* target as little-endian 32-bit words, [7] most significant */
} sha256d_job;

/* Nonces per kernel call in agent._sha256d.scan (GIL-free, ~10 ms on a fast core): bounds the hit
 * buffer and lets Ctrl-C through. The ARM lane's harness scans in the same chunks. */
#define SHA256D_CHUNK (1u << 18)

/* Scans [start, start + count); start + count <= 2**32. `out` has room for `count` nonces.
 * Returns how many nonces were written. Never touches Python objects: callable without the GIL. */
typedef size_t (*sha256d_scan_fn)(const sha256d_job *job, uint32_t start, uint64_t count,
                                  uint32_t *out);

void sha256d_job_init(sha256d_job *job, const unsigned char header[80], const uint32_t target[8]);

/* The kernels compiled in, widest first; usable ones are those the running CPU supports. */
int sha256d_kernel_count(void);
const char *sha256d_kernel_name(int index);
int sha256d_kernel_usable(int index);
sha256d_scan_fn sha256d_kernel_fn(int index);

/* Kernels this CPU family has but this compiler left out of the build, one "name: reason\n" line
 * each ("" when none was). */
const char *sha256d_kernels_omitted(void);

#endif
