/* A WAGI test service whose behaviour is chosen by PATH_INFO. The agent's tests use it to
 * check what reaches the module and how each kind of misbehaviour is contained:
 *   /echo        method, path, query, selected headers and the body, as CGI output
 *   /status      answers with the status and location given in the query (status=N&to=URL)
 *   /plain       prints without any header block (served as text/plain 200)
 *   /env, /env/… prints the whole environment, one variable a line
 *   /rawheader   writes the percent-decoded query string as its header block, then a body
 *   /symlink     makes /scratch/link point at the query string, then tries to read through it
 *   /abssleep    sleeps until an absolute time on the monotonic clock, the query's number of
 *                milliseconds ahead, and prints how long it measured
 *   /open        tries to open the file named by the query string and says what happened
 *   /loop        spins forever (the deadline must stop it)
 *   /membomb     allocates until memory runs out
 *   /hold        allocates and touches MIB mebibytes, holds them MS milliseconds, then says so
 *                (query: MIB:MS)
 *   /recurse     recurses without end (stack exhaustion)
 *   /sleep       sleeps for the number of milliseconds in the query string
 *   /flood       prints without end
 *   /unterminated  prints header lines but never the blank line that ends them
 *   /badheader   prints a header line without a colon
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *env_or(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value != NULL ? value : fallback;
}

static void echo(void) {
    printf("content-type: text/plain\n");
    printf("x-echo-method: %s\n\n", env_or("REQUEST_METHOD", ""));
    printf("method=%s\n", env_or("REQUEST_METHOD", ""));
    printf("path=%s\n", env_or("PATH_INFO", ""));
    printf("query=%s\n", env_or("QUERY_STRING", ""));
    printf("x-test=%s\n", env_or("HTTP_X_TEST", ""));
    printf("content-type=%s\n", env_or("CONTENT_TYPE", ""));
    printf("content-length=%s\n", env_or("CONTENT_LENGTH", ""));
    printf("server-port=%s\n", env_or("SERVER_PORT", ""));
    printf("remote-addr=%s\n", env_or("REMOTE_ADDR", ""));
    printf("body=");
    char buffer[4096];
    size_t got;
    while ((got = fread(buffer, 1, sizeof buffer, stdin)) > 0) {
        fwrite(buffer, 1, got, stdout);
    }
    printf("\n");
}

static void status(void) {
    const char *query = env_or("QUERY_STRING", "");
    int code = 200;
    char location[256] = "";
    sscanf(query, "status=%d&to=%255s", &code, location);
    printf("status: %d Custom\n", code);
    if (location[0] != '\0') {
        printf("location: %s\n", location);
    }
    printf("content-type: text/plain\n\n");
    printf("status %d\n", code);
}

static void open_file(void) {
    const char *path = env_or("QUERY_STRING", "");
    FILE *file = fopen(path, "r");
    printf("content-type: text/plain\n\n");
    if (file == NULL) {
        printf("denied %s: %s\n", path, strerror(errno));
        return;
    }
    char line[256] = "";
    if (fgets(line, sizeof line, file) == NULL) {
        line[0] = '\0';
    }
    fclose(file);
    printf("opened %s: %s\n", path, line);
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The query string with %XX decoded, written out as it is: any header bytes a test needs. */
static void raw_header(void) {
    const char *query = env_or("QUERY_STRING", "");
    for (const char *at = query; *at != '\0'; at++) {
        if (at[0] == '%' && hex_value(at[1]) >= 0 && hex_value(at[2]) >= 0) {
            putchar(hex_value(at[1]) * 16 + hex_value(at[2]));
            at += 2;
        } else {
            putchar(*at);
        }
    }
    printf("\n\nraw header body\n");
}

static void symlink_out(void) {
    const char *target = env_or("QUERY_STRING", "/etc/passwd");
    int made = symlink(target, "/scratch/link");
    printf("content-type: text/plain\n\nsymlink %s\n", made == 0 ? "made" : strerror(errno));
    FILE *file = fopen("/scratch/link", "r");
    if (file == NULL) {
        printf("read through it: %s\n", strerror(errno));
        return;
    }
    char line[256] = "";
    if (fgets(line, sizeof line, file) == NULL) {
        line[0] = '\0';
    }
    fclose(file);
    printf("read through it: %s\n", line);
}

static long elapsed_ms(const struct timespec *from, const struct timespec *to) {
    return (to->tv_sec - from->tv_sec) * 1000L + (to->tv_nsec - from->tv_nsec) / 1000000L;
}

static void hold(void) {
    long mib = 0, millis = 0;
    sscanf(env_or("QUERY_STRING", ""), "%ld:%ld", &mib, &millis);
    volatile char *held = malloc((size_t)(mib > 0 ? mib : 1) << 20);
    if (held == NULL) {
        printf("status: 507 Insufficient Storage\ncontent-type: text/plain\n\nno %ld MiB\n", mib);
        return;
    }
    for (long at = 0; at < mib << 20; at += 4096) {
        held[at] = 1; /* every page touched, so it is resident */
    }
    struct timespec pause = {millis / 1000, (millis % 1000) * 1000000L};
    nanosleep(&pause, NULL);
    printf("content-type: text/plain\n\nheld %ld MiB for %ld ms\n", mib, millis);
}

static void absolute_sleep(void) {
    long millis = atol(env_or("QUERY_STRING", "0"));
    struct timespec start, until, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    until = start;
    until.tv_sec += millis / 1000;
    until.tv_nsec += (millis % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    int failed = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("content-type: text/plain\n\nslept %ld ms (error %d)\n", elapsed_ms(&start, &end),
           failed);
}

static int recurse(int depth) {
    volatile char frame[1024];
    frame[0] = (char)depth;
    if (depth < 0) {
        return 0; /* never true: keeps the compiler from proving the recursion endless */
    }
    return recurse(depth + 1) + frame[0];
}

int main(void) {
    const char *path = env_or("PATH_INFO", "/");
    if (strcmp(path, "/echo") == 0) {
        echo();
    } else if (strcmp(path, "/status") == 0) {
        status();
    } else if (strcmp(path, "/plain") == 0) {
        printf("just text, no headers\n");
    } else if (strcmp(path, "/rawheader") == 0) {
        raw_header();
    } else if (strcmp(path, "/symlink") == 0) {
        symlink_out();
    } else if (strcmp(path, "/abssleep") == 0) {
        absolute_sleep();
    } else if (strcmp(path, "/env") == 0 || strncmp(path, "/env/", 5) == 0) {
        printf("content-type: text/plain\n\n");
        for (char **entry = environ; *entry != NULL; entry++) {
            printf("%s\n", *entry);
        }
    } else if (strcmp(path, "/open") == 0) {
        open_file();
    } else if (strcmp(path, "/loop") == 0) {
        volatile unsigned long counter = 0;
        for (;;) {
            counter++;
        }
    } else if (strcmp(path, "/membomb") == 0) {
        /* the blocks are chained so that the compiler cannot drop the allocations */
        void **chain = NULL;
        for (;;) {
            void **block = malloc(1 << 20);
            if (block == NULL) {
                /* the cap was reached: fail loudly, as a real program would */
                fprintf(stderr, "out of memory\n");
                abort();
            }
            memset(block, 1, 1 << 20);
            *block = chain;
            chain = block;
            if (((volatile char *)block)[8] == 0) {
                break;
            }
        }
        printf("%p\n", (void *)chain);
    } else if (strcmp(path, "/hold") == 0) {
        hold();
    } else if (strcmp(path, "/recurse") == 0) {
        printf("%d\n", recurse(0));
    } else if (strcmp(path, "/sleep") == 0) {
        long millis = atol(env_or("QUERY_STRING", "0"));
        struct timespec pause = {millis / 1000, (millis % 1000) * 1000000L};
        nanosleep(&pause, NULL);
        printf("content-type: text/plain\n\nslept %ld ms\n", millis);
    } else if (strcmp(path, "/flood") == 0) {
        printf("content-type: text/plain\n\n");
        static char chunk[65536];
        memset(chunk, 'x', sizeof chunk);
        for (;;) {
            fwrite(chunk, 1, sizeof chunk, stdout);
        }
    } else if (strcmp(path, "/unterminated") == 0) {
        printf("content-type: text/plain\nx-one: 1\n");
    } else if (strcmp(path, "/badheader") == 0) {
        printf("this is not a header\n\nbody\n");
    } else {
        printf("status: 404 Not Found\ncontent-type: text/plain\n\nno such probe: %s\n", path);
    }
    return 0;
}
