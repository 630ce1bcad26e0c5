/* A job that reports what the sandbox gave it: its arguments, the environment, the contents
 * of /input (if preopened) and whether /output is writable. The exit code is the number after
 * "exit=" among the arguments. The agent's tests run it beside the native wasmtime CLI and
 * compare the two. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static int compare(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(int argc, char **argv) {
    int code = 0;
    for (int i = 0; i < argc; i++) {
        printf("arg[%d]=%s\n", i, argv[i]);
        if (strncmp(argv[i], "exit=", 5) == 0) {
            code = atoi(argv[i] + 5);
        }
    }
    size_t count = 0;
    while (environ[count] != NULL) {
        count++;
    }
    qsort(environ, count, sizeof environ[0], compare);
    for (size_t i = 0; i < count; i++) {
        printf("env %s\n", environ[i]);
    }
    DIR *input = opendir("/input");
    if (input == NULL) {
        printf("input: none\n");
    } else {
        char *names[64];
        size_t found = 0;
        struct dirent *entry;
        while ((entry = readdir(input)) != NULL && found < 64) {
            if (entry->d_name[0] != '.') {
                names[found++] = strdup(entry->d_name);
            }
        }
        closedir(input);
        qsort(names, found, sizeof names[0], compare);
        for (size_t i = 0; i < found; i++) {
            printf("input: %s\n", names[i]);
        }
    }
    FILE *output = fopen("/output/result.txt", "w");
    if (output == NULL) {
        printf("output: not writable\n");
    } else {
        fprintf(output, "written by jobprobe\n");
        fclose(output);
        printf("output: written\n");
    }
    FILE *secret = fopen("/etc/passwd", "r");
    printf("host file: %s\n", secret == NULL ? "denied" : "READABLE");
    fprintf(stderr, "jobprobe exiting with %d\n", code);
    return code;
}
