package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeRoot writes files (path relative to the root: contents) under a
// temporary root directory and returns it.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, contents := range files {
		path := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(contents), 0o644))
	}
	return root
}

// The cgroup files as the kernel writes them.
const (
	v2Cgroup     = "0::/kubepods.slice/pod1.slice/cri-abc.scope\n"
	v1Cgroup     = "12:pids:/kubepods/pod1/abc\n11:memory:/kubepods/pod1/abc\n10:cpu,cpuacct:/kubepods/pod1/abc\n0::/\n"
	v2Leaf       = "sys/fs/cgroup/kubepods.slice/pod1.slice/cri-abc.scope/memory.max"
	v2Pod        = "sys/fs/cgroup/kubepods.slice/pod1.slice/memory.max"
	v1Leaf       = "sys/fs/cgroup/memory/kubepods/pod1/abc/memory.limit_in_bytes"
	v1Root       = "sys/fs/cgroup/memory/memory.limit_in_bytes"
	v1Unlimited  = "9223372036854771712\n"
	mib256       = "268435456\n"
	mib256Int    = int64(268435456)
	mib512       = "536870912\n"
	selfCgroup   = "proc/self/cgroup"
	v2NamespaceL = "sys/fs/cgroup/memory.max"
)

func TestCgroupMemoryLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files map[string]string
		want  int64 // 0: no limit
	}{
		{"v2 limit", map[string]string{selfCgroup: v2Cgroup, v2Leaf: mib256}, mib256Int},
		{"v2 max", map[string]string{selfCgroup: v2Cgroup, v2Leaf: "max\n"}, 0},
		{"v2 parent lower", map[string]string{selfCgroup: v2Cgroup, v2Leaf: mib512, v2Pod: mib256}, mib256Int},
		{"v2 leaf lower", map[string]string{selfCgroup: v2Cgroup, v2Leaf: mib256, v2Pod: mib512}, mib256Int},
		{"v2 parent only", map[string]string{selfCgroup: v2Cgroup, v2Leaf: "max\n", v2Pod: mib256}, mib256Int},
		// In a cgroup namespace the process sees its cgroup as the root.
		{"v2 namespace", map[string]string{selfCgroup: "0::/\n", v2NamespaceL: mib256}, mib256Int},
		// Without one, the host's path is missing in the container's mount.
		{"v2 container mount", map[string]string{selfCgroup: v2Cgroup, v2NamespaceL: mib256}, mib256Int},
		{"v1 limit", map[string]string{selfCgroup: v1Cgroup, v1Leaf: mib256}, mib256Int},
		{"v1 unlimited", map[string]string{selfCgroup: v1Cgroup, v1Leaf: v1Unlimited}, 0},
		{"v1 container mount", map[string]string{selfCgroup: v1Cgroup, v1Root: mib256}, mib256Int},
		{"v1 wins in a hybrid setup", map[string]string{selfCgroup: v1Cgroup, v1Leaf: mib256, v2NamespaceL: mib512}, mib256Int},
		{"no cgroup file", map[string]string{}, 0},
		{"no limit files", map[string]string{selfCgroup: v2Cgroup}, 0},
		{"garbage", map[string]string{selfCgroup: "nonsense\n::\n", v2NamespaceL: "lots\n"}, 0},
		{"zero", map[string]string{selfCgroup: v2Cgroup, v2Leaf: "0\n"}, 0},
		{"path escaping the mount", map[string]string{selfCgroup: "0::/../../etc\n", v2NamespaceL: mib256}, mib256Int},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			limit, ok := cgroupMemoryLimit(fakeRoot(t, tt.files))
			require.Equal(t, tt.want != 0, ok)
			require.Equal(t, tt.want, limit)
		})
	}
}

// TestLimitMemory: 90% of the cgroup's limit becomes Go's soft memory
// limit, unless GOMEMLIMIT says otherwise. Not parallel: it sets the
// process's memory limit (and restores it).
func TestLimitMemory(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	root := fakeRoot(t, map[string]string{selfCgroup: v2Cgroup, v2Leaf: mib256})
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	}

	debug.SetMemoryLimit(math.MaxInt64)
	require.Equal(t, int64(0), limitMemory(env(map[string]string{"GOMEMLIMIT": "100MiB"}), root), "GOMEMLIMIT wins")
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1))

	const want = int64(241591910) // 90% of 256 MiB, rounded down
	require.Equal(t, want, limitMemory(env(nil), root))
	require.Equal(t, want, debug.SetMemoryLimit(-1))

	debug.SetMemoryLimit(math.MaxInt64)
	require.Equal(t, int64(0), limitMemory(env(nil), fakeRoot(t, nil)), "no cgroup limit, no soft limit")
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1))
}
