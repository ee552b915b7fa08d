/* route: the routing table smart clients send requests by (CLUSTER.ROUTES).
 *
 * A RESP rendering of the parts of the cluster map a client needs, so a
 * client in any language routes without decoding the binary map:
 *
 *   *3
 *     :version                      the map version it was made from
 *     *D  *4 :id $host :port $state one per daemon, in id order
 *     *S  *3 $name :partitions *P   one per space; P entries, each the
 *                                   primary's daemon id, 0 when the
 *                                   partition has no live replica
 *
 * A key's partition is xxh64(key, seed 0) % partitions (cmap_partition_of).
 * Invariant: the answer is built from one map, never from two.
 */
#ifndef KEEL_ROUTE_H
#define KEEL_ROUTE_H

#include "buf.h"
#include "cmap.h"

void route_encode(const cmap *m, buf *out);

#endif
