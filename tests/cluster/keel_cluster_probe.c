/* keel_cluster_probe: drives libkeel's cluster mode for
 * tests/cluster/test_libkeel_cluster.py (built into $(BUILD)/tests/ against
 * libkeel.a, the public library alone).
 *
 *   keel_cluster_probe MODE HOST PORT [args]
 *
 *   mode   HOST PORT                      prints "mode <n> id <client id>"
 *   route  HOST PORT SPACE PREFIX N       PUT then GET keys PREFIX0..N-1;
 *                                         prints "key <k> put <addr> get <addr>"
 *   puts   HOST PORT SPACE PREFIX SECONDS PUT PREFIX<i> v value-<i> in a loop
 *   adds   HOST PORT SPACE KEY SECONDS    ADD KEY n 1 in a loop
 *   get    HOST PORT SPACE KEY            one GET; prints "ms <elapsed>"
 *   search HOST PORT SPACE                COUNT and SEARCH; prints "count <n> found <n>"
 *   pipe   HOST PORT SPACE PREFIX N       N pipelined GETs; prints "piped <ok>"
 *   admin  HOST PORT NAME                 SPACE.ADD of NAME, SPACE.LIST
 *
 * Loops print "ack <what>" per acknowledged call and "err <what> <status>
 * <errmsg>" per failed one, flushed at once (a test may kill the cluster
 * under it). Every mode ends with one line
 * "stats attempts=.. retries=.. moved=.. refreshes=.. connects=.. version=.."
 * and exits 0 (2 for bad usage, 1 if the connect failed). RETRY_MS in the
 * environment sets the retry budget.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void print_stats(keel_client *c)
{
    keel_client_stats s;
    keel_client_get_stats(c, &s);
    printf("stats attempts=%" PRIu64 " retries=%" PRIu64 " moved=%" PRIu64 " refreshes=%" PRIu64
           " connects=%" PRIu64 " version=%" PRIu64 "\n",
           s.attempts, s.retries, s.moved, s.route_refreshes, s.connects, s.map_version);
    fflush(stdout);
}

static void print_err(const char *what, keel_client *c, int rc)
{
    printf("err %s %d %s\n", what, rc, keel_client_errmsg(c));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: keel_cluster_probe MODE HOST PORT [args]\n");
        return 2;
    }
    const char *mode = argv[1];
    keel_client *c = NULL;
    int rc = keel_client_connect(argv[2], atoi(argv[3]), 5000, &c);
    if (rc != KEEL_OK) {
        printf("connect-failed %d %s\n", rc, keel_client_errmsg(c));
        keel_client_close(c);
        return 1;
    }
    const char *rm = getenv("RETRY_MS");
    if (rm) keel_client_set_retry_timeout(c, atoi(rm));
    char key[256], val[64];
    if (strcmp(mode, "mode") == 0) {
        printf("mode %d id %" PRIu64 "\n", (int)keel_client_mode(c), keel_client_id(c));
    } else if (strcmp(mode, "route") == 0 && argc == 7) {
        int n = atoi(argv[6]);
        for (int i = 0; i < n; i++) {
            snprintf(key, sizeof key, "%s%d", argv[5], i);
            snprintf(val, sizeof val, "value-%d", i);
            keel_attr a = {"v", val, strlen(val)};
            char put_addr[300];
            rc = keel_put(c, argv[4], key, strlen(key), &a, 1);
            if (rc != KEEL_OK) {
                print_err(key, c, rc);
                continue;
            }
            snprintf(put_addr, sizeof put_addr, "%s", keel_client_last_addr(c));
            keel_object *o = NULL;
            rc = keel_get(c, argv[4], key, strlen(key), &o);
            if (rc != KEEL_OK) {
                print_err(key, c, rc);
                continue;
            }
            const keel_object_attr *v = o ? keel_object_find(o, "v") : NULL;
            printf("key %s put %s get %s %s\n", key, put_addr, keel_client_last_addr(c),
                   v && strcmp(v->value, val) == 0 ? "same" : "DIFFERENT");
            keel_object_free(o);
        }
    } else if ((strcmp(mode, "puts") == 0 || strcmp(mode, "adds") == 0) && argc == 7) {
        double end = now_s() + atof(argv[6]);
        int adds = strcmp(mode, "adds") == 0;
        for (int i = 0; now_s() < end; i++) {
            if (adds) {
                int64_t nv = 0;
                rc = keel_add(c, argv[4], argv[5], strlen(argv[5]), "n", 1, &nv);
                if (rc == KEEL_OK)
                    printf("ack %" PRId64 "\n", nv);
                else
                    print_err(argv[5], c, rc);
            } else {
                snprintf(key, sizeof key, "%s%d", argv[5], i);
                snprintf(val, sizeof val, "value-%d", i);
                keel_attr a = {"v", val, strlen(val)};
                rc = keel_put(c, argv[4], key, strlen(key), &a, 1);
                if (rc == KEEL_OK)
                    printf("ack %s\n", key);
                else
                    print_err(key, c, rc);
            }
            fflush(stdout);
        }
    } else if (strcmp(mode, "get") == 0 && argc == 6) {
        double t0 = now_s();
        keel_object *o = NULL;
        rc = keel_get(c, argv[4], argv[5], strlen(argv[5]), &o);
        double ms = (now_s() - t0) * 1000;
        if (rc == KEEL_OK)
            printf("ack %s\n", o ? "found" : "absent");
        else
            print_err(argv[5], c, rc);
        printf("ms %.0f\n", ms);
        keel_object_free(o);
    } else if (strcmp(mode, "search") == 0 && argc == 5) {
        uint64_t n = 0;
        keel_object **objs = NULL;
        size_t found = 0;
        rc = keel_count(c, argv[4], NULL, 0, &n);
        if (rc != KEEL_OK) print_err("count", c, rc);
        rc = keel_search(c, argv[4], NULL, 0, 0, &objs, &found);
        if (rc != KEEL_OK) print_err("search", c, rc);
        printf("count %" PRIu64 " found %zu\n", n, found);
        keel_objects_free(objs, found);
    } else if (strcmp(mode, "pipe") == 0 && argc == 7) {
        int n = atoi(argv[6]), ok = 0;
        for (int i = 0; i < n; i++) {
            snprintf(key, sizeof key, "%s%d", argv[5], i);
            const char *av[] = {"GET", argv[4], key};
            rc = keel_pipeline_append(c, 3, av, NULL);
            if (rc != KEEL_OK) print_err("append", c, rc);
        }
        while (keel_pipeline_pending(c)) {
            keel_reply *r = NULL;
            rc = keel_pipeline_read(c, &r);
            if (rc != KEEL_OK) {
                print_err("read", c, rc);
                break;
            }
            ok += r->type == KEEL_REPLY_ARRAY;
            keel_reply_free(r);
        }
        printf("piped %d\n", ok);
    } else if (strcmp(mode, "admin") == 0 && argc == 5) {
        char desc[512];
        snprintf(desc, sizeof desc, "space %s key k attributes v, int n create 4 partitions "
                                    "tolerate 1 failures", argv[4]);
        rc = keel_space_add(c, desc);
        if (rc == KEEL_OK) printf("ack space_add\n");
        else print_err("space_add", c, rc);
        char **names = NULL;
        size_t n = 0;
        rc = keel_space_list(c, &names, &n);
        if (rc == KEEL_OK) {
            printf("spaces");
            for (size_t i = 0; i < n; i++)
                printf(" %s", names[i]);
            printf("\n");
        } else {
            print_err("space_list", c, rc);
        }
        keel_strings_free(names, n);
        snprintf(key, sizeof key, "k1");
        keel_attr a = {"v", "x", 1};
        rc = keel_put(c, argv[4], key, 2, &a, 1);
        if (rc == KEEL_OK) printf("ack put\n");
        else print_err("put", c, rc);
    } else {
        fprintf(stderr, "keel_cluster_probe: bad mode or arguments\n");
        keel_client_close(c);
        return 2;
    }
    print_stats(c);
    keel_client_close(c);
    return 0;
}
