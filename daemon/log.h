/* log.h - blip2d's leveled logging to stderr (the daemon logs; libraries never do). */
#ifndef B2D_LOG_H
#define B2D_LOG_H

enum { B2D_LOG_ERROR, B2D_LOG_WARN, B2D_LOG_INFO, B2D_LOG_DEBUG };

/* Messages above this level are dropped; set once at start-up. */
extern int b2d_log_level;

/* Decides the form of the lines: under journald ($JOURNAL_STREAM names our
 * stderr) "<N>message" with the sd-daemon priority N, else
 * "YYYY-MM-DD HH:MM:SS.mmm blip2d[pid]: <level>: message".  Called once at
 * start-up (b2d_log decides at its first line otherwise). */
void b2d_log_init(void);

/* 1 when stderr is the journal stream $JOURNAL_STREAM names. */
int b2d_log_to_journal(void);

/* One line on stderr in the form b2d_log_init chose; thread-safe (a single
 * write per line).  Control bytes of the formatted message (newlines, ESC,
 * DEL ...) are written as \xNN, so text a client sent cannot add lines. */
void b2d_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERR(...) b2d_log(B2D_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) b2d_log(B2D_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) b2d_log(B2D_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) b2d_log(B2D_LOG_DEBUG, __VA_ARGS__)

#endif
