// Package dns is goloop's own name resolver: /etc/hosts, /etc/resolv.conf and
// /etc/services read the way glibc reads them, DNS spoken with
// github.com/miekg/dns, and getaddrinfo/getnameinfo results shaped the way
// glibc shapes them, so that Python code sees what socket.getaddrinfo would
// have returned. Lookups run in goroutines registered as goloop methods.
package dns

import "fmt"

// getaddrinfo error codes, with glibc's values: Python raises
// socket.gaierror(code, message) with them, so they must be the C ones.
const (
	EAI_BADFLAGS   = -1
	EAI_NONAME     = -2
	EAI_AGAIN      = -3
	EAI_FAIL       = -4
	EAI_NODATA     = -5
	EAI_FAMILY     = -6
	EAI_SOCKTYPE   = -7
	EAI_SERVICE    = -8
	EAI_ADDRFAMILY = -9
	EAI_MEMORY     = -10
	EAI_SYSTEM     = -11
	EAI_OVERFLOW   = -12
)

// gaiStrerror holds glibc's gai_strerror texts: users match on them.
var gaiStrerror = map[int]string{
	EAI_BADFLAGS:   "Bad value for ai_flags",
	EAI_NONAME:     "Name or service not known",
	EAI_AGAIN:      "Temporary failure in name resolution",
	EAI_FAIL:       "Non-recoverable failure in name resolution",
	EAI_NODATA:     "No address associated with hostname",
	EAI_FAMILY:     "ai_family not supported",
	EAI_SOCKTYPE:   "ai_socktype not supported",
	EAI_SERVICE:    "Servname not supported for ai_socktype",
	EAI_ADDRFAMILY: "Address family for hostname not supported",
	EAI_MEMORY:     "Memory allocation failure",
	EAI_SYSTEM:     "System error",
	EAI_OVERFLOW:   "Argument buffer overflow",
}

// Error is a failed lookup. Code is the EAI_* value getaddrinfo would have
// returned; Rcode is the DNS response code when a server answered (-1 when
// none did), which the aiodns-style query API reports.
type Error struct {
	Code   int
	Rcode  int
	Name   string
	Detail string
}

func (e *Error) Error() string {
	msg := gaiStrerror[e.Code]
	if msg == "" {
		msg = fmt.Sprintf("Unknown error %d", e.Code)
	}
	if e.Detail != "" {
		return msg + " (" + e.Detail + ")"
	}
	return msg
}

// Message is the text glibc's gai_strerror gives for e.Code.
func (e *Error) Message() string {
	if m, ok := gaiStrerror[e.Code]; ok {
		return m
	}
	return fmt.Sprintf("Unknown error %d", e.Code)
}

func gaiError(code int) *Error { return &Error{Code: code, Rcode: -1} }
