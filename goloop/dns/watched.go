package dns

import (
	"os"
	"sync"
	"time"
)

// watched holds the parsed form of a configuration file and re-parses it
// when the file changes: comparing size, mtime and inode catches editors
// that replace the file as well as those that rewrite it. The file is
// stat'ed at most once per recheck interval (glibc stats on every lookup,
// Go's net package every 5 s): a change is seen within a second.
type watched[T any] struct {
	path    string
	parse   func([]byte) T
	recheck time.Duration
	checked time.Time

	mu     sync.Mutex
	loaded bool
	size   int64
	mtime  time.Time
	ino    uint64
	val    T
}

func newWatched[T any](path string, parse func([]byte) T) *watched[T] {
	return &watched[T]{path: path, parse: parse, recheck: time.Second}
}

// get returns the current parse of the file; a missing or unreadable file
// parses as empty input, as it does for the C library.
func (w *watched[T]) get() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if w.loaded && now.Sub(w.checked) < w.recheck {
		return w.val
	}
	w.checked = now
	st, err := os.Stat(w.path)
	if err != nil {
		if !w.loaded || w.size != -1 {
			w.val, w.loaded, w.size = w.parse(nil), true, -1
		}
		return w.val
	}
	ino := inode(st)
	if w.loaded && st.Size() == w.size && st.ModTime().Equal(w.mtime) && ino == w.ino {
		return w.val
	}
	data, err := os.ReadFile(w.path)
	if err != nil {
		data = nil
	}
	w.val = w.parse(data)
	w.loaded, w.size, w.mtime, w.ino = true, st.Size(), st.ModTime(), ino
	return w.val
}
