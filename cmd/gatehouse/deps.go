package main

import (
	_ "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/open-policy-agent/opa/v1/rego"
	_ "github.com/open-policy-agent/opa/v1/tester"
	_ "github.com/open-policy-agent/opa/v1/format"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
	_ "google.golang.org/grpc"
	_ "google.golang.org/grpc/health"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/fsnotify/fsnotify"
	_ "sigs.k8s.io/yaml"
	_ "golang.org/x/sync/errgroup"
	_ "github.com/MicahParks/keyfunc/v3"
)

func main() {}
