/* route: CLUSTER.ROUTES, the client routing table (route.h). */
#include "route.h"

#include "resp.h"
#include "space.h"

void route_encode(const cmap *m, buf *out)
{
    resp_add_array(out, 3);
    resp_add_int(out, (long long)m->version);
    resp_add_array(out, m->ndaemons);
    for (uint32_t i = 0; i < m->ndaemons; i++) {
        const cmap_daemon *d = &m->daemons[i];
        resp_add_array(out, 4);
        resp_add_int(out, (long long)d->id);
        resp_add_bulk_str(out, d->host);
        resp_add_int(out, d->port);
        resp_add_bulk_str(out, cmap_daemon_state_name(d->state));
    }
    resp_add_array(out, m->nspaces);
    for (uint32_t s = 0; s < m->nspaces; s++) {
        const cmap_space *sp = &m->spaces[s];
        uint32_t n = sp->schema->partitions;
        resp_add_array(out, 3);
        resp_add_bulk_str(out, sp->schema->name);
        resp_add_int(out, n);
        resp_add_array(out, n);
        for (uint32_t p = 0; p < n; p++) {
            const cmap_partition *pt = &sp->parts[p];
            bool live = pt->nreplicas && pt->health != CMAP_H_UNAVAILABLE;
            resp_add_int(out, live ? (long long)pt->replicas[0].daemon : 0);
        }
    }
}
