/* proc: daemonising, the data-directory lock, the pid file (see proc.h). */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"

int proc_daemonize(const char *dir, const char *what, int *is_child, int *ready_fd)
{
    *is_child = 0;
    *ready_fd = -1;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "keel: cannot create data directory %s: %s\n", dir, strerror(errno));
        return 1;
    }
    int fds[2];
    if (pipe(fds)) {
        perror("keel: pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("keel: fork");
        return 1;
    }
    if (pid > 0) {
        close(fds[1]);
        char msg[600] = "";
        ssize_t n = 0, r;
        while ((r = read(fds[0], msg + n, sizeof msg - 1 - (size_t)n)) > 0)
            n += r;
        msg[n > 0 ? n : 0] = 0;
        close(fds[0]);
        if (n > 0 && msg[0] == '0') {
            printf("keel: %s (pid %d), data in %s, log in %s/keel.log\n", what, (int)pid, dir, dir);
            return 0;
        }
        fprintf(stderr, "keel: %s\n", n > 1 ? msg + 1 : "server exited during start-up (see log)");
        return 1;
    }
    close(fds[0]);
    setsid();
    char path[4096];
    snprintf(path, sizeof path, "%s/keel.log", dir);
    if (log_open_file(path) != 0) {
        proc_failed(&fds[1], "cannot open the log file");
        _exit(1);
    }
    int null = open("/dev/null", O_RDWR);
    int logfd = open(path, O_WRONLY | O_APPEND);
    if (null >= 0) dup2(null, 0);
    if (logfd >= 0) {
        dup2(logfd, 1);
        dup2(logfd, 2);
    }
    *is_child = 1;
    *ready_fd = fds[1];
    return 0;
}

void proc_ready(int *ready_fd)
{
    if (*ready_fd < 0) return;
    ssize_t w = write(*ready_fd, "0", 1);
    (void)w;
    close(*ready_fd);
    *ready_fd = -1;
}

void proc_failed(int *ready_fd, const char *msg)
{
    if (*ready_fd < 0) return;
    ssize_t w = write(*ready_fd, "1", 1);
    w = write(*ready_fd, msg, strlen(msg));
    (void)w;
    close(*ready_fd);
    *ready_fd = -1;
}

int proc_lock_dir(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/keel.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %.300s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "data directory %.300s is in use by another keel process", dir);
        close(fd);
        return -1;
    }
    return fd;
}

void proc_write_pid(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/keel.pid", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        log_warn("cannot write %s: %s", path, strerror(errno));
        return;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
}

void proc_remove_pid(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/keel.pid", dir);
    unlink(path);
}

static void close_one(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void proc_loop_close(uv_loop_t *loop)
{
    uv_walk(loop, close_one, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
}

int proc_parse_port(const char *flag, const char *v, int *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || v[0] == '+' || n < 1 || n > 65535) {
        fprintf(stderr, "keel: %s needs a port number in 1..65535, got '%s'\n", flag, v);
        return -1;
    }
    *out = (int)n;
    return 0;
}
