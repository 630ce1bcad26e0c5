// Command etcd starts an etcd server. etcd's own root module carries replace
// directives, so it cannot be installed with `go install`; this main calls the
// server's entry point instead and is versioned by the Kubernetes module graph.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
