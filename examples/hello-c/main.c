/* A C microservice: built with clang --target=wasm32-wasi against wasi-libc.
 * Served over HTTP, its output becomes the response body (text/plain, 200). */
#include <stdio.h>

int main(void) {
    puts("Hello from a C Wasm microservice!");
    return 0;
}
