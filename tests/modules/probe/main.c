/* A WAGI test service whose behaviour is chosen by PATH_INFO. The agent's tests use it to
 * check what reaches the module and how each kind of misbehaviour is contained:
 *   /echo        method, path, query, selected headers and the body, as CGI output
 *   /status      answers with the status and location given in the query (status=N&to=URL)
 *   /plain       prints without any header block (served as text/plain 200)
 *   /env         prints the whole environment, one variable a line
 *   /open        tries to open the file named by the query string and says what happened
 *   /loop        spins forever (the deadline must stop it)
 *   /membomb     allocates until memory runs out
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
    } else if (strcmp(path, "/env") == 0) {
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
