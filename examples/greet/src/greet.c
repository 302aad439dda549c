/*
 * greet: the compiled sample application Slipway builds, packages and deploys.
 *
 * GET /health answers 200 "ok"; GET / answers JSON naming the release that runs.
 * The port comes from PORT (default 8000); the release from GREET_RELEASE, else the file
 * /usr/share/greet/VERSION that Slipway's packager writes, else "dev".
 * Plain POSIX sockets and libc only: one request at a time, each bounded in size and time.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define VERSION_FILE "/usr/share/greet/VERSION"
#define REQUEST_LIMIT 4096
#define RELEASE_LIMIT 64

static char release[RELEASE_LIMIT] = "dev";

/* Keeps only the characters a release name has, so the JSON never needs escaping. */
static void set_release(const char *text) {
    size_t n = 0;
    for (const char *c = text; *c && n + 1 < sizeof release; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '.' || *c == '-' || *c == '_' || *c == '+') {
            release[n++] = *c;
        } else if (*c == '\n' || *c == '\r') {
            break;
        }
    }
    if (n > 0) {
        release[n] = '\0';
    }
}

static void read_release(void) {
    const char *from_env = getenv("GREET_RELEASE");
    if (from_env && *from_env) {
        set_release(from_env);
        return;
    }
    FILE *file = fopen(VERSION_FILE, "r");
    if (!file) {
        return;
    }
    char line[RELEASE_LIMIT];
    if (fgets(line, sizeof line, file)) {
        set_release(line);
    }
    fclose(file);
}

static void respond(int client, int status, const char *type, const char *body) {
    char head[256];
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
    int length = snprintf(head, sizeof head,
                          "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n",
                          status, reason, type, strlen(body));
    if (write(client, head, (size_t)length) == length) {
        (void)!write(client, body, strlen(body));
    }
}

/* Reads until the end of the request's head, or the limit, or the client's silence. */
static void serve(int client) {
    char request[REQUEST_LIMIT + 1];
    size_t used = 0;
    while (used < REQUEST_LIMIT) {
        ssize_t got = read(client, request + used, REQUEST_LIMIT - used);
        if (got <= 0) {
            break;
        }
        used += (size_t)got;
        request[used] = '\0';
        if (strstr(request, "\r\n\r\n") || strstr(request, "\n\n")) {
            break;
        }
    }
    request[used] = '\0';
    char body[128];
    if (strncmp(request, "GET /health ", 12) == 0) {
        respond(client, 200, "text/plain; charset=utf-8", "ok");
    } else if (strncmp(request, "GET / ", 6) == 0) {
        snprintf(body, sizeof body, "{\"app\": \"greet\", \"release\": \"%s\"}", release);
        respond(client, 200, "application/json", body);
    } else if (strncmp(request, "GET ", 4) == 0) {
        respond(client, 404, "text/plain; charset=utf-8", "not found");
    } else {
        respond(client, 400, "text/plain; charset=utf-8", "bad request");
    }
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    read_release();
    const char *port_text = getenv("PORT");
    long port = port_text ? strtol(port_text, NULL, 10) : 8000;
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "greet: PORT `%s` is not a port number\n", port_text);
        return 2;
    }
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_port = htons((unsigned short)port),
                                  .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (server < 0 || bind(server, (struct sockaddr *)&address, sizeof address) < 0 ||
        listen(server, 64) < 0) {
        fprintf(stderr, "greet: cannot listen on port %ld: %s\n", port, strerror(errno));
        return 1;
    }
    printf("greet %s listening on port %ld\n", release, port);
    fflush(stdout);
    struct timeval patience = {.tv_sec = 5};
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) {
            continue;
        }
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &patience, sizeof patience);
        serve(client);
        close(client);
    }
}
