/*
 * The Pod sandbox's process ("pause"): it holds the Pod's namespaces open, reaps any child
 * that is reparented to it (it is PID 1 of the Pod's PID namespace when that is shared) and
 * exits at once on SIGTERM or SIGINT, so the kubelet can stop a sandbox without waiting for
 * a kill timeout. Built with `gcc -static` so the image needs nothing but this binary.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int signum) {
    (void)signum;
    stop_requested = 1;
}

static void on_child(int signum) {
    (void)signum;
    int saved = errno; /* a handler must not clobber errno of the code it interrupted */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int install(int signum, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signum, &action, NULL);
}

int main(void) {
    if (install(SIGTERM, on_stop, 0) || install(SIGINT, on_stop, 0) ||
        install(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART)) {
        perror("pause: sigaction");
        return 1;
    }
    /* Block the stop signals outside sigsuspend, so one arriving between the check and the
     * wait is not lost until the next signal. */
    sigset_t stop_signals, during_wait;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigprocmask(SIG_BLOCK, &stop_signals, &during_wait);
    sigdelset(&during_wait, SIGTERM);
    sigdelset(&during_wait, SIGINT);
    while (!stop_requested) {
        sigsuspend(&during_wait);
    }
    return 0;
}
