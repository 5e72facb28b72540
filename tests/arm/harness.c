/* The ARM lane's harness: the kernels of ext/sha256d_kernels.c, cross-compiled and run under
 * qemu-user, scanning the cases read from stdin with every kernel the CPU offers.
 *
 * stdin, one case a line:   <header: 160 hex> <start> <count> <target: 64 hex, big-endian>
 * stdout: "usable <name>...", a "<name>: <reason>" line for each kernel the compiler left out, then,
 * per case and kernel, "<case> <kernel> <nonce>..." (decimal).
 * The range is scanned in chunks of SHA256D_CHUNK nonces, as agent._sha256d.scan does.
 *
 * Linked with -Wl,--wrap=getauxval: GM_HWCAP_CLEAR / GM_HWCAP2_CLEAR (hex) clear bits from what
 * the kernels read as AT_HWCAP / AT_HWCAP2, to run the fallback on a CPU that has the extension.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "sha256d_kernels.h"

unsigned long __real_getauxval(unsigned long type);

unsigned long __wrap_getauxval(unsigned long type)
{
    const char *clear = NULL;
    unsigned long value = __real_getauxval(type);

    if (type == AT_HWCAP) clear = getenv("GM_HWCAP_CLEAR");
    if (type == AT_HWCAP2) clear = getenv("GM_HWCAP2_CLEAR");
    if (clear != NULL) value &= ~strtoul(clear, NULL, 16);
    return value;
}

static int unhex(const char *text, unsigned char *out, size_t n)
{
    size_t i;

    if (strlen(text) != 2 * n) return -1;
    for (i = 0; i < n; i++) {
        unsigned int byte;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1) return -1;
        out[i] = (unsigned char)byte;
    }
    return 0;
}

int main(void)
{
    static char header_hex[256], target_hex[128];
    unsigned long long start, count;
    uint32_t *found = malloc(SHA256D_CHUNK * sizeof *found);
    int i, n = sha256d_kernel_count(), line = 0;

    if (found == NULL) return 2;
    printf("usable");
    for (i = 0; i < n; i++)
        if (sha256d_kernel_usable(i)) printf(" %s", sha256d_kernel_name(i));
    printf("\n");
    fputs(sha256d_kernels_omitted(), stdout); /* "name: reason" lines of kernels left out */
    while (scanf("%200s %llu %llu %100s", header_hex, &start, &count, target_hex) == 4) {
        unsigned char header[80], target_be[32];
        uint32_t target[8];
        sha256d_job job;
        int w;

        if (unhex(header_hex, header, 80) || unhex(target_hex, target_be, 32) ||
            start + count > (1ull << 32)) {
            fprintf(stderr, "case %d: bad input\n", line);
            return 2;
        }
        for (w = 0; w < 8; w++) { /* word 7 most significant, as agent._sha256d builds them */
            const unsigned char *p = target_be + 28 - 4 * w;
            target[w] = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        }
        sha256d_job_init(&job, header, target);
        for (i = 0; i < n; i++) {
            unsigned long long pos = start, end = start + count;
            if (!sha256d_kernel_usable(i)) continue;
            printf("%d %s", line, sha256d_kernel_name(i));
            while (pos < end) {
                unsigned long long step = end - pos < SHA256D_CHUNK ? end - pos : SHA256D_CHUNK;
                size_t j, hits = sha256d_kernel_fn(i)(&job, (uint32_t)pos, step, found);
                for (j = 0; j < hits; j++) printf(" %lu", (unsigned long)found[j]);
                pos += step;
            }
            printf("\n");
        }
        line++;
    }
    free(found);
    return 0;
}
