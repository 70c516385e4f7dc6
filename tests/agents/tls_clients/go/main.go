// Command https_post is a small Go HTTPS client for Custody's tests: it POSTs a JSON body
// to the URL given as its first argument through Go's own crypto/tls (never OpenSSL),
// so the sensor's Go TLS hooks (found in .gopclntab even when the binary is stripped) are
// what makes its plaintext visible. The CA to trust is read from CUSTODY_TEST_CA (PEM);
// CUSTODY_TEST_AUTH, when set, is sent as the Authorization header; CUSTODY_TEST_H2=1
// offers HTTP/2 (a Transport with its own TLS config otherwise speaks HTTP/1.1 only).
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: https_post URL [BODY]")
		os.Exit(2)
	}
	body := `{"model":"go-test-model","messages":[{"role":"user","content":"hello from go"}]}`
	if len(os.Args) > 2 {
		body = os.Args[2]
	}
	roots := x509.NewCertPool()
	if path := os.Getenv("CUSTODY_TEST_CA"); path != "" {
		pem, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "read CA:", err)
			os.Exit(1)
		}
		roots.AppendCertsFromPEM(pem)
	}
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: os.Getenv("CUSTODY_TEST_H2") == "1",
	}
	client := &http.Client{Transport: transport}
	req, err := http.NewRequest("POST", os.Args[1], bytes.NewBufferString(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, "request:", err)
		os.Exit(2)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth := os.Getenv("CUSTODY_TEST_AUTH"); auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "post:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s\n", resp.StatusCode, out)
}
