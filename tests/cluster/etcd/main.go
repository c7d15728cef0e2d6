// Command etcd is the upstream etcd server, built from its Go module so the e2e tier does not
// depend on a distribution package (Debian's is too old for Kubernetes >= 1.31).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
