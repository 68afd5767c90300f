package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// repoRoot is the repository's top directory (tests run in deploy/).
var repoRoot string

// scratch is a directory shared by the tests of this package, removed at
// the end: the relay binary built once from the Dockerfile's command lives
// there.
var scratch string

func TestMain(m *testing.M) {
	root, err := filepath.Abs("..")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploy tests: cannot find the repository root: %v\n", err)
		os.Exit(2)
	}
	repoRoot = root
	scratch, err = os.MkdirTemp("", "outbox-relay-deploy-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploy tests: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	// Directories made read-only by the tests must be writable again to be
	// removed.
	_ = filepath.WalkDir(scratch, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(path, 0o755)
		}
		return nil
	})
	_ = os.RemoveAll(scratch)
	os.Exit(code)
}

// repoPath joins elements to the repository root.
func repoPath(elem ...string) string {
	return filepath.Join(append([]string{repoRoot}, elem...)...)
}
