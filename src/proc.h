/* proc: process plumbing shared by every keel server — daemonising with a
 * readiness report to the parent, the data-directory lock, the pid file.
 *
 * Daemonising: the parent forks and waits on a pipe until the child reports
 * that it serves (proc_ready) or why it cannot (proc_failed), so a server
 * started without -f fails loudly with the child's message and exit status 1.
 */
#ifndef KEEL_PROC_H
#define KEEL_PROC_H

#include <stddef.h>

/* Forks. In the parent: waits for the child's report, prints it, and returns
 * the exit status for the parent (0 serving, 1 failed) with *is_child = 0.
 * In the child: detaches (setsid), sends stdio and the log to DIR/keel.log,
 * returns 0 with *is_child = 1 and *ready_fd set. what names the server in
 * the parent's message ("serving on HOST:PORT"). */
int proc_daemonize(const char *dir, const char *what, int *is_child, int *ready_fd);
/* Child side of the report (fd < 0: foreground, nothing to do). */
void proc_ready(int *ready_fd);
void proc_failed(int *ready_fd, const char *msg);

/* Takes DIR/keel.lock with flock; returns the fd, or -1 with a message. */
int proc_lock_dir(const char *dir, char *err, size_t errlen);
void proc_write_pid(const char *dir);
void proc_remove_pid(const char *dir);

/* Closes every handle of loop, runs their close callbacks, closes the loop. */
struct uv_loop_s;
void proc_loop_close(struct uv_loop_s *loop);
/* Parses a port number for flag (1..65535); prints a message and returns -1
 * if v is not one. */
int proc_parse_port(const char *flag, const char *v, int *out);

#endif
