package main

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// console writes whole lines from the demo's goroutines and the relay's
// output to one writer, so that lines never interleave.
type console struct {
	mu sync.Mutex
	w  io.Writer
}

// printf writes one line; a newline is added.
func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A write error means the reader is gone (see SIGPIPE in main); the
	// demo must still stop everything, so it carries on regardless.
	_, _ = fmt.Fprintf(c.w, format+"\n", args...)
}

// locked runs f while holding the console, with a printf that writes
// under that hold: lines printed by others in the meantime come after f's.
func (c *console) locked(f func(printf func(format string, args ...any))) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(func(format string, args ...any) {
		_, _ = fmt.Fprintf(c.w, format+"\n", args...)
	})
}

// linePrefixer is an io.Writer for a child's output that prints each line
// to a console with a prefix. It is not safe for concurrent writes; exec
// serializes them when Stdout and Stderr are the same linePrefixer.
type linePrefixer struct {
	out    *console
	prefix string
	buf    []byte // a partial line, waiting for its newline
}

func (w *linePrefixer) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.out.printf("%s%s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	// Move the partial line to the front so buf does not creep along its
	// backing array forever.
	w.buf = append(w.buf[:0:0], w.buf...)
	return len(p), nil
}

// flush prints a last line that had no newline.
func (w *linePrefixer) flush() {
	if len(w.buf) > 0 {
		w.out.printf("%s%s", w.prefix, w.buf)
		w.buf = nil
	}
}
