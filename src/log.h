/* log: leveled, timestamped log lines for servers.
 *
 * One line per call: "2026-11-23T14:42:58.123Z LEVEL message". Events that
 * operators alert on use a stable event name as the first word of the message
 * ("event=daemon_failed daemon=3 ..."). The log goes to stderr unless
 * log_open_file redirects it. Safe to call from any thread (one write(2) per
 * line, so lines never interleave).
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_NOTICE, LOG_WARN, LOG_ERROR };

void log_set_level(int level);
/* Sends the log to a file (appending). Returns 0 or -1 with errno set. */
int log_open_file(const char *path);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
