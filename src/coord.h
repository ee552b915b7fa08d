/* coord: `keel coordinator` — one member of the Raft-replicated coordinator
 * that owns the cluster map (docs/coordinator.md is the contract).
 */
#ifndef KEEL_COORD_H
#define KEEL_COORD_H

/* Runs `keel coordinator` (argv[0] is "coordinator"). Returns the exit
 * status: 0 clean shutdown, 1 start-up failure, 2 usage error. */
int coord_main(int argc, char **argv);

#endif
