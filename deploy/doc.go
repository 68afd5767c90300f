// Package deploy holds the tests of what ships the relay: the Dockerfile
// (deploy/image_test.go) and the Helm charts under helm/
// (deploy/helm_test.go). It has no code of its own; docs/deploy.md says what
// the tests prove and what they cannot without a Docker engine or a
// Kubernetes cluster.
package deploy
