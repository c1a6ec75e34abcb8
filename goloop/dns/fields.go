package dns

import (
	"bytes"
	"strings"
)

// eachFields calls fn with the whitespace-separated fields of every line of
// data that has any once a '#' comment is cut off: the line format of
// /etc/hosts and /etc/services.
func eachFields(data []byte, fn func(f []string)) {
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		if i := bytes.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if f := strings.Fields(string(line)); len(f) > 0 {
			fn(f)
		}
	}
}
