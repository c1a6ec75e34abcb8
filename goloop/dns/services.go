package dns

import (
	"strconv"
	"strings"
)

// Services is a parsed /etc/services: "name port/proto aliases...".
type Services struct {
	byName map[string]int    // "name/proto" -> port, first line wins
	byPort map[string]string // "port/proto" -> official name, first line wins
}

// ParseServices parses services(5) text. Malformed lines are skipped.
func ParseServices(data []byte) *Services {
	s := &Services{byName: map[string]int{}, byPort: map[string]string{}}
	eachFields(data, func(f []string) {
		if len(f) < 2 {
			return
		}
		slash := strings.IndexByte(f[1], '/')
		if slash <= 0 || slash == len(f[1])-1 {
			return
		}
		port, err := strconv.Atoi(f[1][:slash])
		if err != nil || port < 0 || port > 65535 {
			return
		}
		proto := f[1][slash+1:]
		pk := strconv.Itoa(port) + "/" + proto
		if _, ok := s.byPort[pk]; !ok {
			s.byPort[pk] = f[0]
		}
		names := append([]string{f[0]}, f[2:]...)
		for _, n := range names {
			k := n + "/" + proto
			if _, ok := s.byName[k]; !ok {
				s.byName[k] = port
			}
		}
	})
	return s
}

// Port looks name up for proto ("tcp", "udp", ...). Names are case
// sensitive, as in glibc.
func (s *Services) Port(name, proto string) (int, bool) {
	if s == nil {
		return 0, false
	}
	p, ok := s.byName[name+"/"+proto]
	return p, ok
}

// Name is the reverse lookup getnameinfo uses.
func (s *Services) Name(port int, proto string) (string, bool) {
	if s == nil {
		return "", false
	}
	n, ok := s.byPort[strconv.Itoa(port)+"/"+proto]
	return n, ok
}
