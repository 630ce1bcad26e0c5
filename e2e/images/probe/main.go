// Command probe is the one program inside the local node's test images: a Pod runs
// `probe serve` to be a backend, and tests `kubectl exec` the other subcommands in a Pod to
// look at the cluster from the inside (DNS through CoreDNS, Services through kube-proxy, the
// API server through the `kubernetes` Service with the Pod's own ServiceAccount token).
// It is static (CGO_ENABLED=0, Go's own resolver), so its image holds nothing but itself.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: probe serve|get|resolve|whoami|routes [args]"))
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "resolve":
		err = resolve(os.Args[2:])
	case "whoami":
		err = whoami()
	case "routes":
		err = routes()
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "probe:", err)
	os.Exit(1)
}

// serve answers every request with the text and the Pod's hostname until SIGTERM or SIGINT.
func serve(args []string) error {
	flags := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := flags.Int("port", 8080, "TCP port to listen on")
	text := flags.String("text", "hello from probe", "first line of every answer")
	if err := flags.Parse(args); err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s\n%s\n", *text, hostname)
	})
	server := &http.Server{
		Addr:              fmt.Sprintf(":%d", *port),
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	fmt.Printf("probe: serving %q on port %d\n", *text, *port)
	if err := server.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// get prints the body of a GET; a status other than 200 is an error.
func get(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: probe get URL")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	response, err := client.Get(args[0])
	if err != nil {
		return err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", args[0], response.Status, body)
	}
	_, err = os.Stdout.Write(body)
	return err
}

// resolve prints the addresses of a name, looked up as any program in the Pod would (the
// Pod's resolv.conf, search domains included).
func resolve(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: probe resolve NAME")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addresses, err := net.DefaultResolver.LookupHost(ctx, args[0])
	if err != nil {
		return err
	}
	fmt.Println(strings.Join(addresses, "\n"))
	return nil
}

// whoami asks the API server who the Pod's ServiceAccount token belongs to, the way an
// in-cluster client connects: KUBERNETES_SERVICE_HOST/PORT, the token and the CA bundle the
// kubelet projects into the Pod, and the server's certificate checked against that CA.
func whoami() error {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return errors.New("KUBERNETES_SERVICE_HOST/PORT are not set")
	}
	token, err := os.ReadFile(serviceAccountDir + "/token")
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(serviceAccountDir + "/ca.crt")
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return errors.New("no certificate in ca.crt")
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	review := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	url := "https://" + net.JoinHostPort(host, port) +
		"/apis/authentication.k8s.io/v1/selfsubjectreviews"
	request, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(review))
	if err != nil {
		return err
	}
	request.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	request.Header.Set("Content-Type", "application/json")
	response, err := client.Do(request)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return err
	}
	if response.StatusCode != http.StatusCreated && response.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, response.Status, body)
	}
	var answer struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return err
	}
	fmt.Println(answer.Status.UserInfo.Username)
	return nil
}

// routes prints the Pod's IPv4 routes as "destination/prefix via gateway", one a line, read
// from /proc/net/route so that tests can see where a Pod could send without sending anything.
func routes() error {
	table, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(string(table)), "\n")
	for _, line := range lines[1:] {
		fields := strings.Fields(line)
		if len(fields) < 8 {
			continue
		}
		destination, err1 := littleEndianIPv4(fields[1])
		gateway, err2 := littleEndianIPv4(fields[2])
		mask, err3 := littleEndianIPv4(fields[7])
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		prefix, _ := net.IPMask(mask.To4()).Size()
		fmt.Printf("%s/%d via %s\n", destination, prefix, gateway)
	}
	return nil
}

// littleEndianIPv4 decodes an address as /proc/net/route prints it (hex, host byte order).
func littleEndianIPv4(text string) (net.IP, error) {
	var value uint32
	if _, err := fmt.Sscanf(text, "%X", &value); err != nil {
		return nil, fmt.Errorf("bad address %q in /proc/net/route: %w", text, err)
	}
	return net.IPv4(byte(value), byte(value>>8), byte(value>>16), byte(value>>24)), nil
}
