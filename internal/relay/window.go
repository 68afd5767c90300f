package relay

// window holds the publishes in flight, oldest first, in a ring allocated
// once: a slice slid along by re-slicing and appending is copied whole every
// time it runs out of room, and with a thousand events of a few hundred bytes
// in flight that copying was a large share of the pump's allocations.
type window struct {
	buf  []inflight
	head int // index in buf of the oldest
	n    int
	// commits counts the atomic batch commits in the window.
	commits int
}

func newWindow(capacity int) window {
	return window{buf: make([]inflight, max(capacity, 1))}
}

// Len returns how many publishes are in the window.
func (w *window) Len() int { return w.n }

// At returns the i-th oldest publish.
func (w *window) At(i int) *inflight {
	i += w.head
	if i >= len(w.buf) {
		i -= len(w.buf)
	}
	return &w.buf[i]
}

// Push adds f as the newest publish.
func (w *window) Push(f inflight) {
	if w.n == len(w.buf) {
		w.grow()
	}
	*w.At(w.n) = f
	w.n++
	if f.commit {
		w.commits++
	}
}

// Commits returns how many atomic batch commits are in the window.
func (w *window) Commits() int { return w.commits }

// Drop removes the k oldest publishes.
func (w *window) Drop(k int) {
	for ; k > 0 && w.n > 0; k-- {
		if w.buf[w.head].commit {
			w.commits--
		}
		w.buf[w.head] = inflight{} // let the event's buffers go
		w.head++
		if w.head == len(w.buf) {
			w.head = 0
		}
		w.n--
	}
}

// DropLast removes the k newest publishes.
func (w *window) DropLast(k int) {
	for ; k > 0 && w.n > 0; k-- {
		if w.At(w.n - 1).commit {
			w.commits--
		}
		*w.At(w.n - 1) = inflight{}
		w.n--
	}
}

// Clear empties the window.
func (w *window) Clear() { w.Drop(w.n) }

func (w *window) grow() {
	buf := make([]inflight, 2*len(w.buf))
	for i := range w.n {
		buf[i] = *w.At(i)
	}
	w.buf, w.head = buf, 0
}
