package goloop

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// An IPv4 connection's EvAccept carries both its addresses (record.go), for a
// listener on one address and for a wildcard one; an IPv6 one carries none.
func TestAcceptCarriesAddresses(t *testing.T) {
	cases := []struct {
		name   string
		family int
		bind   unix.Sockaddr
		dial   func(port int) unix.Sockaddr
	}{
		{"ipv4", unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}},
			func(p int) unix.Sockaddr { return &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: p} }},
		{"ipv4-wildcard", unix.AF_INET, &unix.SockaddrInet4{},
			func(p int) unix.Sockaddr { return &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 2}, Port: p} }},
		{"ipv6", unix.AF_INET6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}},
			func(p int) unix.Sockaddr { return &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: p} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b Backend) {
				lfd, err := unix.Socket(tc.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(lfd)
				if err := unix.Bind(lfd, tc.bind); err != nil {
					t.Skip("no such address here:", err)
				}
				unix.Listen(lfd, 16)
				sa, _ := unix.Getsockname(lfd)
				var port int
				switch a := sa.(type) {
				case *unix.SockaddrInet4:
					port = a.Port
				case *unix.SockaddrInet6:
					port = a.Port
				}
				// Two clients: the second accept on a listener uses what the first learnt.
				for i := 0; i < 2; i++ {
					cfd, _ := unix.Socket(tc.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
					defer unix.Close(cfd)
					if err := unix.Connect(cfd, tc.dial(port)); err != nil {
						t.Fatal(err)
					}
				}
				got := collect(t, b, []Sub{{Op: OpAcceptStart, Fd: int32(lfd), Token: 1}},
					func(cs []Comp) bool { return countKind(cs, EvAccept, 1) >= 2 })
				n := 0
				for _, c := range got {
					if c.Kind != EvAccept {
						continue
					}
					n++
					if c.Res < 0 {
						t.Fatalf("accept: %d", c.Res)
					}
					peer, _ := unix.Getpeername(int(c.Res))
					local, _ := unix.Getsockname(int(c.Res))
					unix.Close(int(c.Res))
					if tc.family != unix.AF_INET {
						if c.Aux != 0 || c.Ptr != 0 || c.Buf != 0 {
							t.Fatalf("%v: addresses where none belong: %+v", tc.name, c)
						}
						continue
					}
					p4, l4 := peer.(*unix.SockaddrInet4), local.(*unix.SockaddrInet4)
					if c.Aux&0xffff != unix.AF_INET {
						t.Fatalf("no addresses: %+v", c)
					}
					if want := unpack4(uint64(c.Ptr)); *want != *p4 {
						t.Fatalf("peer %+v, want %+v", want, p4)
					}
					if want := unpack4(uint64(c.Buf) | uint64(c.Aux>>16)<<32); *want != *l4 {
						t.Fatalf("local %+v, want %+v", want, l4)
					}
				}
				if n < 2 {
					t.Fatalf("%d accepts", n)
				}
				collect(t, b, []Sub{{Op: OpAcceptStop, Fd: int32(lfd), Token: 1}}, func([]Comp) bool { return true })
			})
		})
	}
}

// unpack4 reads a packed address as C does: bytes as they lie in memory.
func unpack4(v uint64) *unix.SockaddrInet4 {
	var raw [8]byte
	binary.LittleEndian.PutUint64(raw[:], v)
	sa := &unix.SockaddrInet4{Port: int(raw[4])<<8 | int(raw[5])}
	copy(sa.Addr[:], raw[:4])
	return sa
}

// A successful IPv4 connect's EvConnect carries the socket's own address
// (record.go); an IPv6 one carries none.
func TestConnectCarriesLocalAddress(t *testing.T) {
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		forEachBackend(t, func(t *testing.T, b Backend) {
			lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(lfd)
			var raw []byte
			if family == unix.AF_INET {
				unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
			} else if err := unix.Bind(lfd, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}); err != nil {
				t.Skip("no IPv6 loopback:", err)
			}
			unix.Listen(lfd, 4)
			sa, _ := unix.Getsockname(lfd)
			if a, ok := sa.(*unix.SockaddrInet4); ok {
				raw = heapBuf(16)
				raw[0] = unix.AF_INET
				raw[2], raw[3] = byte(a.Port>>8), byte(a.Port)
				copy(raw[4:8], a.Addr[:])
			} else {
				a6 := sa.(*unix.SockaddrInet6)
				raw = heapBuf(28)
				raw[0] = unix.AF_INET6
				raw[2], raw[3] = byte(a6.Port>>8), byte(a6.Port)
				copy(raw[8:24], a6.Addr[:])
			}
			cfd, _ := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			defer unix.Close(cfd)
			got := collect(t, b, []Sub{{Op: OpConnect, Fd: int32(cfd), Token: 2, Ptr: ptrOf(raw), Len: uint32(len(raw))}},
				hasKind(EvConnect, 2))
			for _, c := range got {
				if c.Kind != EvConnect {
					continue
				}
				if c.Res != 0 {
					t.Fatalf("connect: %+v", c)
				}
				if family != unix.AF_INET {
					if c.Aux != 0 {
						t.Fatalf("IPv6 carries no address: %+v", c)
					}
					continue
				}
				local, _ := unix.Getsockname(cfd)
				if want := unpack4(uint64(c.Buf) | uint64(c.Aux>>16)<<32); c.Aux&0xffff != unix.AF_INET ||
					*want != *local.(*unix.SockaddrInet4) {
					t.Fatalf("local %+v from %+v, want %+v", want, c, local)
				}
			}
		})
	}
}
