/* commit: the storage thread — group commit of everything the network thread
 * submits, so the network thread never waits on disk (DESIGN section 7).
 *
 * The network thread collects work items during one event-loop turn and hands
 * them over with commit_submit. The storage thread takes everything queued,
 * runs every item's exec in ONE write transaction (in submission order, so a
 * later item sees an earlier one's writes), commits it (with the sync policy),
 * and hands the items back, in submission order, to the done callback on the
 * loop thread.
 *
 *    network thread                      storage thread
 *    --------------                      --------------
 *    commit_submit(items) --queue-->     begin; exec each; commit
 *    done(items)          <--async--     (sync if policy = always)
 *
 * Invariants:
 *   1. Items complete in submission order, and an item completes only after
 *      the transaction holding its writes committed (and, with sync=always,
 *      reached the disk). So a reply sent at completion never announces
 *      something a process crash could undo.
 *   2. If any exec or the commit fails, the whole transaction is aborted and
 *      every item that had an exec gets status = the storage error; none of
 *      their writes happened. Items without exec (replies kept in order) are
 *      unaffected.
 *   3. With sync=batch a syncer thread forces committed data to disk at least
 *      every second; commit_stop syncs once more before returning.
 */
#ifndef KEEL_COMMIT_H
#define KEEL_COMMIT_H

#include <uv.h>

#include "buf.h"
#include "store.h"

typedef struct commit_item commit_item;
/* Runs on the storage thread inside the group's write transaction. Returns 0
 * or a storage error code (which aborts the group). */
typedef int (*commit_exec_fn)(store_txn *t, commit_item *it);

struct commit_item {
    commit_item *next;   /* private to commit while submitted */
    commit_exec_fn exec; /* NULL: nothing to run, only keeps its place in line */
    int status;          /* out: 0, or the storage error that failed the group */
    buf reply;           /* for exec to fill; owned by the item's owner */
};

typedef struct commit commit;
/* Called on the loop thread with completed items linked through next, in
 * submission order. The callee takes them back. */
typedef void (*commit_done_fn)(void *arg, commit_item *list);

int commit_start(commit **out, store *s, uv_loop_t *loop, commit_done_fn done, void *arg);
/* Queues the items linked head..tail (loop thread only). */
void commit_submit(commit *c, commit_item *head, commit_item *tail);
/* Number of transactions committed so far (for INFO). */
unsigned long long commit_groups(commit *c);
/* Finishes everything queued, delivers it, syncs, joins the threads. Must be
 * called on the loop thread; it runs the loop's async handle itself. */
void commit_stop(commit *c);

#endif
