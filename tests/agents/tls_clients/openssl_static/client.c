/* openssl-static-client: an HTTPS POST over OpenSSL linked statically, for tests of a TLS
 * stack Custody cannot read. Built by the test with `cc … -static` against Debian's
 * libssl.a and stripped: no SSL_* symbols remain, so custodyd must report the binary as
 * uncovered TLS and its connections as opaque egress rather than stay silent.
 *
 * Usage: openssl-static-client HOST PORT PATH CA_PEM. Prints the status line. */
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "openssl-static-client: %s\n", what);
    ERR_print_errors_fp(stderr);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5)
        return fail("usage: openssl-static-client HOST PORT PATH CA_PEM");
    const char *host = argv[1], *port = argv[2], *path = argv[3], *ca = argv[4];
    struct addrinfo hints = {0}, *ai;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return fail("cannot resolve");
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
        return fail("cannot connect");
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        return fail("cannot load the CA");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, host);
    SSL_set1_host(ssl, host);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        return fail("handshake failed");
    const char *body = "{\"model\":\"static-openssl-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, host, strlen(body), body);
    if (SSL_write(ssl, req, n) != n)
        return fail("write failed");
    char resp[4096];
    int got = SSL_read(ssl, resp, sizeof resp - 1);
    if (got <= 0)
        return fail("no answer");
    resp[got] = 0;
    char *eol = strstr(resp, "\r\n");
    if (eol)
        *eol = 0;
    puts(resp);
    SSL_shutdown(ssl);
    close(fd);
    return 0;
}
