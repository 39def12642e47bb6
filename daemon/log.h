/* log.h - blip2d's leveled logging to stderr (the daemon logs; libraries never do). */
#ifndef B2D_LOG_H
#define B2D_LOG_H

enum { B2D_LOG_ERROR, B2D_LOG_WARN, B2D_LOG_INFO, B2D_LOG_DEBUG };

/* Messages above this level are dropped; set once at start-up. */
extern int b2d_log_level;

/* One line "blip2d[pid]: <level>: message" on stderr; thread-safe (a single
 * write per line). */
void b2d_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERR(...) b2d_log(B2D_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) b2d_log(B2D_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) b2d_log(B2D_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) b2d_log(B2D_LOG_DEBUG, __VA_ARGS__)

#endif
