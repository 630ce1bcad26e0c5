/* A WAGI greeter: the greeting comes from the environment (GREETING), the name from a
 * ConfigMap preopened at /config, and each answer is logged to a writable /scratch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void read_name(char *name, size_t size) {
    FILE *file = fopen("/config/name", "r");
    if (file == NULL || fgets(name, (int)size, file) == NULL) {
        snprintf(name, size, "stranger");
    }
    if (file != NULL) {
        fclose(file);
    }
    name[strcspn(name, "\r\n")] = '\0';
}

int main(void) {
    const char *greeting = getenv("GREETING");
    char name[128];
    read_name(name, sizeof name);

    FILE *log = fopen("/scratch/greetings.log", "a");
    if (log != NULL) {
        fprintf(log, "%s\n", name);
        fclose(log);
    }

    printf("content-type: text/plain; charset=utf-8\n\n");
    printf("%s, %s!\n", greeting != NULL ? greeting : "Hello", name);
    return 0;
}
