/*
 * sigbus.h - the SIGBUS handler of blip2d (sigbus.c): a mapped weight file
 * that changes underneath the daemon ends it with one log line and status 70.
 */
#ifndef B2D_SIGBUS_H
#define B2D_SIGBUS_H

#define B2D_EXIT_SIGBUS 70   /* EX_SOFTWARE: a mapped weight file changed underneath */

/* Installs the handler.  0 on success, -1 (errno set) on failure. */
int b2d_sigbus_setup(void);

#endif
