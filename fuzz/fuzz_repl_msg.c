/* fuzz_repl_msg: libFuzzer target for what another daemon or the disk can
 * hand to the replication decoders. Invariants checked with abort():
 *   1. A decoded message re-encodes and decodes to the same encoding.
 *   2. Decoders never crash or over-read (ASan) and free what they return.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "repl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    repl_msg m;
    if (repl_msg_decode(data, size, &m) == 0) {
        buf a, b;
        buf_init(&a);
        buf_init(&b);
        repl_msg_encode(&m, &a);
        repl_msg m2;
        if (repl_msg_decode(a.data, a.len, &m2) != 0) abort();
        repl_msg_encode(&m2, &b);
        if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) abort();
        repl_msg_free(&m2);
        repl_msg_free(&m);
        buf_free(&a);
        buf_free(&b);
    }
    repl_entry e;
    (void)repl_entry_decode(data, size, &e);
    return 0;
}
