/* plan: the failure-handling planner — which cluster-map commands the
 * coordinator leader should propose next (DESIGN section 6).
 *
 * plan_decide is a pure function: the cluster map, the current time and the
 * coordinator's observations go in; cmap commands to propose, a progress
 * summary for `keel status` and a "fully protected" flag come out. It does no
 * I/O, reads no clock and keeps no state between calls, so the same inputs
 * always give the same outputs and a new coordinator leader can take over
 * planning from the map alone.
 *
 * One round, in this order (docs/failover.md gives the reasons):
 *   1. every daemon in `failed` that the map still shows ONLINE or SUSPECT:
 *      SET_DAEMON_STATE OFFLINE (the coordinator decided its lease ran out);
 *   2. every caught-up report still valid: REPLICA_IN_SYNC (before any
 *      failure of this round moves the epoch and makes it stale);
 *   3. every daemon the map holds down (OFFLINE, SHUTDOWN, RETIRED) that
 *      REPLICA_FAILED would still change something for: REPLICA_FAILED;
 *      except that a SHUTDOWN or RETIRED daemon still leading a partition
 *      that would get a new primary is left alone until ping_timeout + 10%
 *      after it went down (its lease must have run out: DESIGN I1);
 *   4. every DEGRADED partition short of tolerate+1 replicas on ONLINE
 *      daemons: first ADD_REPLICA of its departed daemons that are ONLINE
 *      again (their log tail is likely still kept: a cheap catch-up); then,
 *      for missing replicas whose departed daemon has been down for
 *      reprotect_delay_s or more (or that no departed daemon accounts for),
 *      ADD_REPLICA on the ONLINE daemons holding the fewest replicas, at most
 *      max_copies_per_target copies into one daemon and max_copies_per_source
 *      out of one primary at a time (CATCHING_UP replicas count as copies in
 *      progress), so that many daemons copy in parallel.
 * Every command is applied to a private copy of the map as it is chosen, so
 * the list is valid in order: proposed in order with nothing in between,
 * every command applies.
 *
 * Invariants:
 *   1. plan_decide never emits a command that its own copy of the map refused.
 *   2. It never asks for ADD_REPLICA on a partition that is not DEGRADED
 *      (an UNAVAILABLE partition waits for its in-sync replicas: there is
 *      nothing to copy from) nor on a daemon that is not ONLINE.
 *   3. Apart from returning departed daemons, no daemon receives more than
 *      max_copies_per_target concurrent copies and no primary sends more than
 *      max_copies_per_source.
 */
#ifndef KEEL_PLAN_H
#define KEEL_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "cmap.h"

#define PLAN_DEFAULT_MAX_COPIES 4     /* per target and per source, when 0 is given */
#define PLAN_DEFAULT_MAX_NEW_REPLICAS 1024 /* ADD_REPLICA per round, when 0 is given */

/* When a daemon went down, on the clock of plan_input.now_ms. */
typedef struct plan_down {
    uint64_t daemon;
    uint64_t since_ms;
} plan_down;

/* A primary's report that a CATCHING_UP replica caught up (docs/replication.md,
 * CAUGHT_UP(peer, epoch)). */
typedef struct plan_caught_up {
    uint64_t from;   /* the reporting daemon; must be the partition's primary (0: not checked) */
    uint32_t space;  /* space id */
    uint32_t part;   /* partition index */
    uint64_t daemon; /* the replica that caught up */
    uint64_t epoch;  /* the partition's epoch when it did */
} plan_caught_up;

typedef struct plan_input {
    uint64_t now_ms;            /* wall clock, the clock the map's since_ms uses */
    uint32_t reprotect_delay_s; /* normally m->settings.reprotect_delay_s */
    /* daemons the coordinator has just declared failed (lease run out) */
    const uint64_t *failed;
    size_t nfailed;
    /* optional: when daemons went down, overriding the map's since_ms (for a
     * coordinator that measures absence on its own monotonic clock; then
     * now_ms must be on that clock too) */
    const plan_down *down;
    size_t ndown;
    /* caught-up reports received since the last round */
    const plan_caught_up *caught_up;
    size_t ncaught_up;
    uint32_t max_copies_per_target; /* 0: PLAN_DEFAULT_MAX_COPIES */
    uint32_t max_copies_per_source; /* 0: PLAN_DEFAULT_MAX_COPIES */
    uint32_t max_new_replicas;      /* 0: PLAN_DEFAULT_MAX_NEW_REPLICAS */
    bool was_fully_protected;       /* the previous round's fully_protected (true at start) */
} plan_input;

/* One command to propose. */
typedef struct plan_cmd {
    uint8_t type;    /* enum cmap_cmd_type */
    uint64_t daemon; /* the daemon it is about */
    uint32_t space;  /* space id (0 for SET_DAEMON_STATE and REPLICA_FAILED) */
    uint32_t part;
    size_t off, len; /* the encoded command: plan_out.bytes.data + off, len bytes */
} plan_cmd;

/* For `keel status`. Health counts are of the map given to plan_decide. */
typedef struct plan_progress {
    uint32_t partitions;
    uint32_t protected_parts;
    uint32_t degraded;
    uint32_t unavailable;
    uint32_t copying;     /* partitions with a CATCHING_UP replica on an ONLINE daemon */
    uint32_t waiting;     /* partitions holding back re-protection within the delay */
    uint32_t throttled;   /* replicas this round deferred by the copy limits */
    uint32_t unplaceable; /* replicas no ONLINE daemon can take (too few daemons) */
} plan_progress;

typedef struct plan_out {
    buf bytes;        /* the encoded commands, back to back */
    plan_cmd *cmds;   /* ncmds entries, in proposal order */
    size_t ncmds;
    size_t cap;
    plan_progress progress;
    bool fully_protected; /* every partition of the given map is PROTECTED */
    bool restored;        /* fully_protected and not in->was_fully_protected: log
                             full_protection_restored */
    bool truncated;       /* max_new_replicas reached: run another round once these apply
                             (failures and reports are never cut short) */
    uint32_t stale_reports; /* caught-up reports dropped (stale, or not from the primary) */
    uint64_t next_wake_ms;  /* earliest time a held-back decision becomes due (a replica
                               waited for, a SHUTDOWN primary's lease); 0: none */
} plan_out;

void plan_out_init(plan_out *out);
void plan_out_free(plan_out *out);

/* Decides one round. `out` (initialised) is emptied first; its memory is
 * reused across calls. Returns out->ncmds. m is not modified. Daemon ids in
 * the input that the map does not know are ignored. */
size_t plan_decide(const cmap *m, const plan_input *in, plan_out *out);

#endif
