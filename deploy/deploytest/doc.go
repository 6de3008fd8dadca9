// Package deploytest holds the tests of the operator-facing files under deploy/: the
// Kubernetes manifests (decoded strictly into the k8s.io/api types), the Compose file and the
// Dockerfile (only settings the binaries understand), the Prometheus configuration and alert
// rules (promtool, and a live Prometheus scraping a live gateway), the Grafana dashboards
// (every metric they read is exported by a running process), the official OpenAI Node
// client run against a live platform, and `make run`'s script (deploy/local/run.sh) run as
// it is, with README's fine-tuning walkthrough (deploy/sdktest/walkthrough) against it and
// Ctrl-C after. It has no code of its own outside tests.
package deploytest
