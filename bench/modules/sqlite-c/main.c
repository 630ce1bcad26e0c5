/* A large module from a real C program: SQLite (its amalgamation, about 260,000 lines, fetched
 * and checked at build time as vendor.toml says; never committed), behind a small WAGI service.
 *
 * Each request opens a fresh in-memory database and fills the table
 *
 *     items(id INTEGER PRIMARY KEY, name TEXT, category INTEGER, score INTEGER)
 *
 * with N rows (row i of 1..N: name "item-i", category i % 10, score i * 7919 % 1000), N from
 * the query string ("rows=N", 1000 by default, 0 to 100000). Then:
 *
 *   GET   a JSON summary built by SQL: SQLite's version, the row count, and count, sum, min and
 *         max of the score per category;
 *   POST  the body is one SQL statement, run against that table; its result as tab-separated
 *         text, a line of column names first (NULL prints as an empty field).
 *
 * A statement SQLite refuses answers 400 with SQLite's message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite3.h"

#define DEFAULT_ROWS 1000
#define MAX_ROWS 100000
#define MAX_BODY (64 * 1024)

static const char FILL[] =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, category INTEGER NOT NULL,"
    " score INTEGER NOT NULL);"
    "CREATE INDEX items_by_category ON items(category);";

static const char INSERT[] =
    "WITH RECURSIVE n(i) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)"
    " INSERT INTO items SELECT i, 'item-' || i, i % 10, i * 7919 % 1000 FROM n";

static const char SUMMARY[] =
    "SELECT json_object('sqlite', sqlite_version(), 'rows', (SELECT count(*) FROM items),"
    " 'categories', (SELECT json_group_array(json_object('category', category, 'count', n,"
    " 'sum', total, 'min', low, 'max', high) ORDER BY category) FROM (SELECT category,"
    " count(*) AS n, sum(score) AS total, min(score) AS low, max(score) AS high FROM items"
    " GROUP BY category)))";

static void fail(int status, const char *reason, const char *detail) {
    printf("Status: %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\n", status, reason,
           detail);
}

/* The value of "rows=" in the query string, or -1 when it is there but not a number in range. */
static long rows_from_query(const char *query) {
    if (query == NULL) return DEFAULT_ROWS;
    for (const char *pair = query; *pair != '\0';) {
        size_t length = strcspn(pair, "&");
        if (length >= 5 && strncmp(pair, "rows=", 5) == 0) {
            char *end;
            long rows = strtol(pair + 5, &end, 10);
            if (pair[5] < '0' || pair[5] > '9' || end != pair + length || rows > MAX_ROWS) {
                return -1;
            }
            return rows;
        }
        pair += length;
        if (*pair == '&') pair++;
    }
    return DEFAULT_ROWS;
}

/* The request body (NUL-terminated, in a buffer the caller frees), or NULL when it is too large. */
static char *read_body(void) {
    char *body = malloc(MAX_BODY + 1);
    if (body == NULL) return NULL;
    size_t length = fread(body, 1, MAX_BODY + 1, stdin);
    if (length > MAX_BODY) {
        free(body);
        return NULL;
    }
    body[length] = '\0';
    return body;
}

static int fill(sqlite3 *db, long rows) {
    sqlite3_stmt *insert = NULL;
    if (sqlite3_exec(db, FILL, NULL, NULL, NULL) != SQLITE_OK) return SQLITE_ERROR;
    if (sqlite3_prepare_v2(db, INSERT, -1, &insert, NULL) != SQLITE_OK) return SQLITE_ERROR;
    sqlite3_bind_int64(insert, 1, rows);
    int rc = sqlite3_step(insert);
    sqlite3_finalize(insert);
    return rc == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
}

static void summary(sqlite3 *db) {
    sqlite3_stmt *query = NULL;
    if (sqlite3_prepare_v2(db, SUMMARY, -1, &query, NULL) != SQLITE_OK ||
        sqlite3_step(query) != SQLITE_ROW) {
        fail(500, "Internal Server Error", sqlite3_errmsg(db));
        sqlite3_finalize(query);
        return;
    }
    const char *json = (const char *)sqlite3_column_text(query, 0);
    printf("Content-Type: application/json\r\n\r\n%s\n", json);
    sqlite3_finalize(query);
}

static int blank(const char *text) {
    return text == NULL || text[strspn(text, " \t\r\n;")] == '\0';
}

/* Runs one statement; its rows are written only once it has stepped without an error, so a
 * failing statement answers 400 and nothing else. */
static void statement(sqlite3 *db, const char *sql) {
    sqlite3_stmt *query = NULL;
    const char *tail = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &query, &tail) != SQLITE_OK) {
        fail(400, "Bad Request", sqlite3_errmsg(db));
        return;
    }
    if (query == NULL || !blank(tail)) {
        sqlite3_finalize(query);
        fail(400, "Bad Request", "the body must hold exactly one SQL statement");
        return;
    }
    int rc = sqlite3_step(query);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        fail(400, "Bad Request", sqlite3_errmsg(db));
        sqlite3_finalize(query);
        return;
    }
    printf("Content-Type: text/tab-separated-values; charset=utf-8\r\n\r\n");
    int columns = sqlite3_column_count(query);
    for (int c = 0; c < columns; c++) {
        printf("%s%s", c ? "\t" : "", sqlite3_column_name(query, c));
    }
    if (columns) putchar('\n');
    for (; rc == SQLITE_ROW; rc = sqlite3_step(query)) {
        for (int c = 0; c < columns; c++) {
            const unsigned char *value = sqlite3_column_text(query, c);
            printf("%s%s", c ? "\t" : "", value ? (const char *)value : "");
        }
        putchar('\n');
    }
    if (rc != SQLITE_DONE) printf("error: %s\n", sqlite3_errmsg(db));
    sqlite3_finalize(query);
}

int main(void) {
    const char *method = getenv("REQUEST_METHOD");
    int post = method != NULL && strcmp(method, "POST") == 0;
    if (method != NULL && !post && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        fail(405, "Method Not Allowed", "GET for the summary, POST with one SQL statement");
        return 0;
    }
    long rows = rows_from_query(getenv("QUERY_STRING"));
    if (rows < 0) {
        fail(400, "Bad Request", "rows must be a whole number from 0 to 100000");
        return 0;
    }
    char *body = post ? read_body() : NULL;
    if (post && body == NULL) {
        fail(413, "Payload Too Large", "the SQL statement is longer than 64 KiB");
        return 0;
    }
    sqlite3 *db = NULL;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK || fill(db, rows) != SQLITE_OK) {
        fail(500, "Internal Server Error", db ? sqlite3_errmsg(db) : "out of memory");
    } else if (post) {
        statement(db, body);
    } else {
        summary(db);
    }
    sqlite3_close(db);
    free(body);
    return 0;
}
