package goloop

import "errors"

// Placeholder until the io_uring backend lands.
func newUring(opt Options) (Backend, error) {
	return nil, errors.New("goloop: io_uring backend not built yet")
}
