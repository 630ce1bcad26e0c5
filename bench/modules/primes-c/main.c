/* A compute-heavy WAGI service for the benchmarks: counts the primes below N with a sieve
 * (N from the query string, "n=200000" by default, at most 50,000,000) and answers the count.
 * Its time is the guest's own work, so it shows what a request costs when the module, not the
 * agent, dominates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long limit_from_query(void) {
    const char *query = getenv("QUERY_STRING");
    long n = 200000;
    if (query != NULL && strncmp(query, "n=", 2) == 0) {
        n = strtol(query + 2, NULL, 10);
    }
    if (n < 2) n = 2;
    if (n > 50000000) n = 50000000;
    return n;
}

int main(void) {
    long n = limit_from_query();
    unsigned char *composite = calloc((size_t)n, 1);
    if (composite == NULL) {
        printf("Status: 500\r\nContent-Type: text/plain\r\n\r\nout of memory\n");
        return 0;
    }
    long count = 0;
    for (long i = 2; i < n; i++) {
        if (composite[i]) continue;
        count++;
        if (i > n / i) continue; /* i * i would pass n (and overflow a 32-bit long) */
        for (long j = i * i; j < n; j += i) composite[j] = 1;
    }
    printf("Content-Type: text/plain\r\n\r\n%ld primes below %ld\n", count, n);
    free(composite);
    return 0;
}
