/* fuzz_raft_msg: libFuzzer target for everything a peer coordinator or a
 * disk can hand to the Raft decoders (messages, entries, hard state,
 * snapshots, configurations). Invariants checked with abort():
 *   1. A decoded message re-encodes and decodes to the same encoding.
 *   2. Decoders never crash or over-read (ASan) and free what they return.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "raft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    raft_msg m;
    if (raft_msg_decode(data, size, &m) == 0) {
        buf a, b;
        buf_init(&a);
        buf_init(&b);
        raft_msg_encode(&m, &a);
        raft_msg m2;
        if (raft_msg_decode(a.data, a.len, &m2) != 0) abort();
        raft_msg_encode(&m2, &b);
        if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) abort();
        raft_msg_free(&m2);
        raft_msg_free(&m);
        buf_free(&a);
        buf_free(&b);
    }
    raft_entry e;
    if (raft_entry_decode(data, size, &e) == 0) raft_entry_free(&e);
    raft_hard_state hs;
    (void)raft_hard_state_decode(data, size, &hs);
    raft_snapshot s;
    if (raft_snapshot_decode(data, size, &s) == 0) raft_snapshot_free(&s);
    raft_config c;
    (void)raft_config_decode(data, size, &c);
    return 0;
}
