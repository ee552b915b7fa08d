/* sim.h: shared state of the deterministic Raft simulator (tests/sim).
 *
 * sim.c drives a cluster of raft nodes (src/raft.h) in one process: a seeded
 * network that loses, delays, reorders and duplicates messages and cuts the
 * nodes into partitions; crashes that lose everything a node has not yet
 * persisted through a Ready (the simulated disk holds exactly what the node
 * acknowledged with raft_advance); restarts from that disk; membership
 * changes; a stream of client proposals and read-index requests.
 *
 * check.c holds the property checks run after every step (election safety,
 * leader append-only, log matching, leader completeness, state machine
 * safety, committed entries never lost, read-index linearizability) and
 * reports the first violation.
 *
 * Invariant: everything random comes from sim.rng (splitmix64 seeded with the
 * run's seed) or from raft's own PRNG seeded from it, so a seed replays
 * exactly.
 */
#ifndef KEEL_SIM_H
#define KEEL_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft.h"

#define SIM_MAX_NODES 12 /* initial nodes plus joiners */

/* What the simulated disk of one node holds. */
typedef struct sim_disk {
    raft_hard_state hs;
    raft_snapshot snap; /* index 0: none; owns data */
    raft_entry *ents;   /* consecutive, owned */
    size_t n, cap;
} sim_disk;

/* (term, payload hash) of one log position, for shadows. */
typedef struct sim_ent {
    uint64_t term, hash;
} sim_ent;

typedef struct sim_node {
    raft_id id;
    bool exists;  /* started at least once */
    bool up;
    raft *r;      /* NULL while down */
    sim_disk disk;
    /* the application: applied index and a chain hash of everything applied */
    uint64_t app_index, app_chain;
    uint32_t restarts;
    /* checker state */
    uint64_t last_commit;    /* commit seen at the previous check (monotonic while up) */
    int last_role;
    uint64_t last_term;
    uint64_t shadow_term;    /* term of the leader log in shadow (0: none) */
    uint64_t shadow_first;
    sim_ent *shadow;
    size_t shadow_n, shadow_cap;
} sim_node;

typedef struct sim_packet {
    uint64_t deliver_at;
    raft_id from, to;
    size_t len;
    uint8_t *bytes;
} sim_packet;

typedef struct sim_read {
    uint64_t ctx;
    uint64_t min_index; /* highest index known committed anywhere when issued */
} sim_read;

typedef struct sim {
    uint64_t seed, rng;
    uint64_t step, steps;
    int n_initial;
    bool verbose, break_commit;
    /* fault knobs, drawn per seed */
    uint32_t loss_pct, dup_pct, max_delay, crash_pm, restart_pct, part_pm, heal_pct;
    uint32_t ready_pct, tick_pct, propose_pct, compact_every, member_pm, transfer_pm, read_pct;
    uint32_t election_ticks, max_msg_entries;
    uint64_t heal_at; /* from here on: no faults, everything up, network whole */
    bool faults_on;
    sim_node nodes[SIM_MAX_NODES]; /* nodes[i].id == i + 1 */
    int n_nodes;                   /* ids in use: 1..n_nodes */
    int group[SIM_MAX_NODES];      /* partition group per node */
    sim_packet *net;
    size_t n_net, net_cap;
    uint64_t next_proposal;        /* payload counter for client entries */
    uint64_t first_after_heal;     /* first payload proposed after heal_at (0: none yet) */
    bool live_ok;                  /* a proposal made after heal_at was committed */
    sim_read *reads;
    size_t n_reads, reads_cap;
    uint64_t next_read;
    /* checker: global records, indexed by log index / term */
    sim_ent *committed;            /* committed[i]: entry known committed at index i */
    uint64_t *commit_term;         /* lowest term of a node that knew index i committed */
    uint64_t *applied_chain;       /* chain hash after applying index i */
    size_t rec_cap;                /* capacity of the three arrays above */
    uint64_t max_committed;
    raft_id *leader_of;            /* leader_of[t]: the leader of term t */
    size_t leader_cap;
    bool violated;
} sim;

uint64_t sim_rand(sim *s);
uint64_t sim_entry_hash(const raft_entry *e);
uint64_t sim_chain(uint64_t chain, const raft_entry *e);

/* check.c */
void sim_check_init(sim *s);
void sim_check_free(sim *s);
/* Records the application of entry e at node n; false on a violation. */
bool sim_check_apply(sim *s, sim_node *n, const raft_entry *e);
/* Records a snapshot installed at node n (index, chain); false on a violation. */
bool sim_check_install(sim *s, sim_node *n, uint64_t index, uint64_t chain);
/* Runs every property over the nodes that are up; false on a violation. */
bool sim_check_step(sim *s);
/* Prints the violation line and the replay command, sets s->violated. */
void sim_check_fail(sim *s, const char *property, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
