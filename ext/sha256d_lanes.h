/* A multi-lane SHA-256d scan kernel, written once for any lane type. Included by
 * sha256d_kernels.c after defining:
 *   LANES_T      the lane type: uint32_t, or a GCC/clang vector of uint32_t
 *   LANES_N      lanes per step (1 for uint32_t)
 *   LANES_INDEX  a LANES_T holding 0, 1, .. LANES_N-1
 *   LANES_FN     the function name
 *   LANES_ATTR   function attributes (e.g. a target("avx2") attribute), may be empty
 * Vector arithmetic with a scalar operand broadcasts it, so the round code reads like scalar code.
 * Everything is unrolled and in SSA form: the register shuffles of a round cost nothing, constant
 * message words (padding, zeros) fold away, nonce-independent work is hoisted out of the loop, and
 * work that does not reach the one word we test (H7 of the second hash) is dead code.
 */

#define L_RND(k, w)                                                           \
    do {                                                                      \
        LANES_T t1_ = h + BS1(e) + CH(e, f, g) + (uint32_t)(k) + (w);         \
        LANES_T t2_ = BS0(a) + MAJ(a, b, c);                                  \
        h = g; g = f; f = e; e = d + t1_; d = c; c = b; b = a; a = t1_ + t2_; \
    } while (0)

#define L_UPD(wi, wm2, wm7, wm15) (wi = SS1(wm2) + (wm7) + SS0(wm15) + (wi))

#define L_BLOCK16(kb)                                                  \
    do {                                                               \
        L_RND(K256[(kb) + 0], L_UPD(w0, w14, w9, w1));                 \
        L_RND(K256[(kb) + 1], L_UPD(w1, w15, w10, w2));                \
        L_RND(K256[(kb) + 2], L_UPD(w2, w0, w11, w3));                 \
        L_RND(K256[(kb) + 3], L_UPD(w3, w1, w12, w4));                 \
        L_RND(K256[(kb) + 4], L_UPD(w4, w2, w13, w5));                 \
        L_RND(K256[(kb) + 5], L_UPD(w5, w3, w14, w6));                 \
        L_RND(K256[(kb) + 6], L_UPD(w6, w4, w15, w7));                 \
        L_RND(K256[(kb) + 7], L_UPD(w7, w5, w0, w8));                  \
        L_RND(K256[(kb) + 8], L_UPD(w8, w6, w1, w9));                  \
        L_RND(K256[(kb) + 9], L_UPD(w9, w7, w2, w10));                 \
        L_RND(K256[(kb) + 10], L_UPD(w10, w8, w3, w11));               \
        L_RND(K256[(kb) + 11], L_UPD(w11, w9, w4, w12));               \
        L_RND(K256[(kb) + 12], L_UPD(w12, w10, w5, w13));              \
        L_RND(K256[(kb) + 13], L_UPD(w13, w11, w6, w14));              \
        L_RND(K256[(kb) + 14], L_UPD(w14, w12, w7, w15));              \
        L_RND(K256[(kb) + 15], L_UPD(w15, w13, w8, w0));               \
    } while (0)

#define L_SPLAT(x) (((LANES_T){0}) + (uint32_t)(x))

LANES_ATTR static size_t LANES_FN(const sha256d_job *job, uint32_t start, uint64_t count,
                                  uint32_t *out)
{
    const uint64_t end = (uint64_t)start + count;
    const uint32_t t7 = job->target[7];
    size_t found = 0;
    uint64_t base;

    for (base = start; base < end; base += LANES_N) {
        LANES_T a, b, c, d, e, f, g, h;
        LANES_T w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15;
        LANES_T nonce = L_SPLAT((uint32_t)base) + LANES_INDEX;
        uint32_t h7[LANES_N];
        int lane;

        /* First hash, second block: words 0..2 fixed, word 3 the nonce (big-endian), padding. */
        w0 = L_SPLAT(job->w[0]);
        w1 = L_SPLAT(job->w[1]);
        w2 = L_SPLAT(job->w[2]);
        w3 = (nonce << 24) | ((nonce << 8) & 0x00ff0000u) | ((nonce >> 8) & 0x0000ff00u) |
             (nonce >> 24);
        w4 = L_SPLAT(0x80000000u);
        w5 = w6 = w7 = w8 = w9 = w10 = w11 = w12 = w13 = w14 = L_SPLAT(0);
        w15 = L_SPLAT(640);
        a = L_SPLAT(job->pre3[0]); b = L_SPLAT(job->pre3[1]);
        c = L_SPLAT(job->pre3[2]); d = L_SPLAT(job->pre3[3]);
        e = L_SPLAT(job->pre3[4]); f = L_SPLAT(job->pre3[5]);
        g = L_SPLAT(job->pre3[6]); h = L_SPLAT(job->pre3[7]);
        /* rounds 0..2 are in pre3; the nonce enters at round 3 (added last so the rest hoists) */
        L_RND(K256[3], w3);
        L_RND(K256[4], w4); L_RND(K256[5], w5); L_RND(K256[6], w6); L_RND(K256[7], w7);
        L_RND(K256[8], w8); L_RND(K256[9], w9); L_RND(K256[10], w10); L_RND(K256[11], w11);
        L_RND(K256[12], w12); L_RND(K256[13], w13); L_RND(K256[14], w14); L_RND(K256[15], w15);
        L_BLOCK16(16);
        L_BLOCK16(32);
        L_BLOCK16(48);

        /* Second hash: the 32-byte digest, padding, length 256 bits. */
        w0 = a + job->mid[0]; w1 = b + job->mid[1]; w2 = c + job->mid[2]; w3 = d + job->mid[3];
        w4 = e + job->mid[4]; w5 = f + job->mid[5]; w6 = g + job->mid[6]; w7 = h + job->mid[7];
        w8 = L_SPLAT(0x80000000u);
        w9 = w10 = w11 = w12 = w13 = w14 = L_SPLAT(0);
        w15 = L_SPLAT(256);
        a = L_SPLAT(IV256[0]); b = L_SPLAT(IV256[1]); c = L_SPLAT(IV256[2]); d = L_SPLAT(IV256[3]);
        e = L_SPLAT(IV256[4]); f = L_SPLAT(IV256[5]); g = L_SPLAT(IV256[6]); h = L_SPLAT(IV256[7]);
        L_RND(K256[0], w0); L_RND(K256[1], w1); L_RND(K256[2], w2); L_RND(K256[3], w3);
        L_RND(K256[4], w4); L_RND(K256[5], w5); L_RND(K256[6], w6); L_RND(K256[7], w7);
        L_RND(K256[8], w8); L_RND(K256[9], w9); L_RND(K256[10], w10); L_RND(K256[11], w11);
        L_RND(K256[12], w12); L_RND(K256[13], w13); L_RND(K256[14], w14); L_RND(K256[15], w15);
        L_BLOCK16(16);
        L_BLOCK16(32);
        L_BLOCK16(48);
        /* H7 is the only word used here: rounds 61..63 and the late Σ0/Maj are dead code. */
        h = h + IV256[7];
        memcpy(h7, &h, sizeof h);
        for (lane = 0; lane < LANES_N; lane++) {
            uint64_t n = base + (uint64_t)lane;
            if (n < end && bswap32(h7[lane]) <= t7 && full_check(job, (uint32_t)n)) {
                out[found++] = (uint32_t)n;
            }
        }
    }
    return found;
}

#undef L_RND
#undef L_UPD
#undef L_BLOCK16
#undef L_SPLAT
