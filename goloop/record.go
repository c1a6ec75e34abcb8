// Package goloop is the I/O core of the goloop asyncio event loop: backends
// (io_uring, epoll) that turn a batch of submissions into a batch of
// completions, receive buffers, and later TLS and DNS. It never sees a Python
// object; the C extension above it speaks only in these records.
package goloop

import "unsafe"

// Sub is one submission. Its layout is gl_sub in pybind/goloop.h: the C
// extension fills an array of them during a loop iteration and hands the
// whole array over in the call that waits, so the layout is the ABI.
type Sub struct {
	Op    uint8
	_     [3]byte
	Fd    int32
	Token uint64  // C's name for the target; echoed in every completion
	Ptr   uintptr // OpSend: data; OpConnect: sockaddr. C memory, alive until the completion
	Len   uint32
	Arg   uint32 // OpBufReturn: buffer id; OpPollStart: event mask; OpClose: CloseAbort
}

// Comp is one completion; gl_comp in pybind/goloop.h.
type Comp struct {
	Token uint64
	Res   int32 // bytes, a new fd, 0, or -errno
	Kind  uint8
	Flags uint8
	_     uint16
	Ptr   uintptr // EvRecv: start of the received bytes in a pool buffer
	Buf   uint32  // EvRecv: buffer id to give back with OpBufReturn
	Aux   uint32  // EvPoll: ready mask; EvRecv from the stream pool: the buffer's size
}

// Compile-time layout checks: C relies on these sizes.
var _ [32 - unsafe.Sizeof(Sub{})]byte
var _ [unsafe.Sizeof(Sub{}) - 32]byte
var _ [32 - unsafe.Sizeof(Comp{})]byte
var _ [unsafe.Sizeof(Comp{}) - 32]byte

// Operations. Unless said otherwise an operation on an fd is ordered after
// every earlier operation on the same fd in the same or an earlier batch.
const (
	OpNop uint8 = iota
	// OpRecvStart arms continuous receive on Fd. Each chunk arrives as EvRecv
	// with Res > 0, Ptr/Buf naming a pool buffer that C gives back with
	// OpBufReturn. Res == 0 is end of stream and Res < 0 an error; both disarm.
	// Running out of pool buffers pauses receiving; it resumes by itself when
	// buffers come back.
	OpRecvStart
	// OpRecvStop disarms receive. Chunks already in flight may still be
	// delivered after it (io_uring cannot take back a completed recv), so C
	// must hold them until it reads again.
	OpRecvStop
	// OpSend sends Len bytes at Ptr, all of them, after earlier sends on Fd.
	// Exactly one EvSend answers it: Res == Len, or -errno (-ECANCELED when
	// an abort dropped it). C keeps the memory alive until then. Arg:
	// ArgNotSock, or ArgRecType(t) for one TLS record of type t (OpKTLS).
	OpSend
	// OpShutdown shuts the write side down once earlier sends are done: EvShutdown.
	OpShutdown
	// OpClose stops everything on Fd and closes it. Graceful (Arg 0): after
	// earlier sends finish. CloseAbort: pending sends end with -ECANCELED.
	// EvClosed comes last; no completion names Fd's token after it.
	OpClose
	// OpAcceptStart arms continuous accept on a listening Fd: EvAccept with
	// Res = new fd (non-blocking, close-on-exec) or -errno. Transient errors
	// (EMFILE, ECONNABORTED...) are reported with FlagMore: still armed.
	// An IPv4 connection's EvAccept also carries both its addresses, so C
	// builds peername and sockname without a syscall (fdstate.go
	// acceptAddrs): Aux = AF_INET | local port << 16; Ptr = the peer's
	// address (bits 0-31) and port (bits 32-47); Buf = the local address.
	// Addresses and ports are their sockaddr bytes as they lie in memory
	// (network order). Aux 0: no addresses (another family, or not known).
	OpAcceptStart
	OpAcceptStop
	// OpConnect connects Fd to the sockaddr at Ptr/Len: EvConnect, Res 0 or
	// -errno, once. Fd stays its owner's; Go uses it until EvConnect. A
	// successful IPv4 connect's EvConnect carries the socket's own address
	// as EvAccept carries it (Buf, and Aux = AF_INET | port << 16).
	OpConnect
	// OpPollStart watches Fd for readiness (Arg = PollIn|PollOut), level
	// triggered like select(): EvPoll with Aux = ready mask, every Poll call
	// while it stays ready. A second OpPollStart on Fd replaces the mask.
	OpPollStart
	// OpPollStop ends the watch; no EvPoll for Fd after it.
	OpPollStop
	// OpBufReturn gives pool buffer Arg back. With Ptr, a stream buffer C
	// held since its EvRecv (whose Aux is the buffer size) comes back backed
	// by the Len bytes of C memory at Ptr: C kept the memory the data is in
	// for the program. Len must be that size. C keeps that memory alive and
	// untouched until the loop is closed or the buffer comes back again with
	// other memory. A lend Go refuses (another size, a buffer C does not
	// hold) takes the buffer out of circulation: its old memory may be the
	// program's now.
	OpBufReturn
	// OpConnectStop gives up the OpConnect with this Token on Fd (its
	// caller was cancelled): its EvConnect comes at once with -ECANCELED,
	// unless it had already come. From then on Go does not touch Fd for it,
	// so its owner may close the fd before the next Poll.
	OpConnectStop
	// OpDgramRecvStart arms continuous datagram receive on a SOCK_DGRAM Fd
	// (dgram.go). Each datagram arrives whole as one EvDgram: Res = payload
	// length (0 is an empty datagram, not an end), Ptr = the payload in a
	// pool buffer, Buf = its id (DgramBufBit set) to give back with
	// OpBufReturn, Aux = the length of the source address, a sockaddr that
	// lies DgramNameCap bytes before Ptr (Aux 0: none). A datagram longer
	// than DgramMax is cut to DgramMax bytes, as recvfrom(DgramMax) cuts it.
	// A receive error (an ICMP error reported on a connected socket:
	// ECONNREFUSED...) is EvDgram with Res < 0 and FlagMore: still armed;
	// without FlagMore (EBADF, ENOTSOCK...) receiving is over. OpRecvStop
	// disarms; as with OpRecvStart, datagrams already in flight may still
	// be delivered after it, and C holds them.
	OpDgramRecvStart
	// OpSendTo sends one datagram, ordered with the other sends on Fd, to
	// the address in the gl_sendto block at Ptr (Arg = the address length,
	// 0 for a connected socket's own peer; Len = the datagram's length).
	// C keeps the block and the bytes it points to alive until the one
	// EvSend that answers it: Res == Len, or -errno for this datagram only
	// (the queue goes on: EACCES, EMSGSIZE, ECONNREFUSED...), -ECANCELED
	// when an abort dropped it.
	OpSendTo
	// OpSendfile sends Len bytes (at most SendfileMax) of the file whose fd is
	// Arg, from file offset Ptr, on Fd with sendfile(2), after earlier sends
	// on Fd and before later ones, when Fd is writable. The file fd is lent:
	// Go never closes it, and C keeps it open until the completion. Exactly
	// one EvSendfile answers it: Res = bytes sent (fewer than Len only at the
	// end of the file), or -errno with Aux = bytes sent before the error
	// (-ECANCELED when an abort dropped it).
	OpSendfile
	// OpSockRecv receives at most Len bytes into the C memory at Ptr with
	// one recv(2) on Fd, a socket that stays its owner's (loop.sock_recv,
	// sock_recv_into; sockops.go): at once if data is there, else when Fd
	// is readable (a readiness wait on both backends, never a request that
	// reads in the kernel: Go reads only inside Poll and only for an op
	// still live, so OpSockStop leaves unread bytes in the socket). Exactly
	// one EvSock answers it: Res = bytes received (0: end of stream) or
	// -errno, -ECANCELED when OpSockStop stopped it or a later OpSockRecv
	// on Fd replaced it (one receive per fd, as asyncio's one reader per
	// fd). C keeps the memory alive and unmoved until that EvSock.
	OpSockRecv
	// OpSockSend sends the Len bytes at Ptr on Fd (loop.sock_sendall): as
	// much as the socket takes at once, the rest as it becomes writable.
	// Exactly one EvSock answers it: Res = Len, or -errno with Aux = bytes
	// sent before the error, -ECANCELED (Aux likewise) when OpSockStop
	// stopped it or a later OpSockSend on Fd replaced it. C keeps the
	// memory alive until that EvSock.
	OpSockSend
	// OpSockStop stops the OpSockRecv or OpSockSend with this Token on Fd
	// (its caller was cancelled): its EvSock comes at once with -ECANCELED,
	// unless it had already come. Applied before Go waits or reads, so a
	// stopped receive reads nothing; from then on Go does not touch Fd for
	// it, and its owner may close the fd before the next Poll.
	OpSockStop
	// OpSockAccept accepts one connection on the listening Fd, its owner's
	// (loop.sock_accept), with accept4(SOCK_NONBLOCK|SOCK_CLOEXEC), the
	// peer's address going to the C memory at Ptr (Len bytes): at once if
	// a connection waits, else when Fd is readable. Exactly one EvSock
	// answers it: Res = the new fd, which is C's from then on, with Aux =
	// the address's length; or -errno, -ECANCELED when OpSockStop stopped
	// it or a later OpSockAccept or OpSockRecv on Fd replaced it (it takes
	// the fd's one receive, as asyncio's sock_accept takes its one reader).
	OpSockAccept
	// OpSockRecvFrom receives one datagram (loop.sock_recvfrom,
	// sock_recvfrom_into) with one recvfrom(2) on Fd, into the gl_sendto
	// block at Ptr: data and len name the destination, and Go writes the
	// source address into name and its length into namelen. As
	// OpSockRecv otherwise (the fd's one receive): one EvSock, Res = the
	// bytes received (a longer datagram is cut, as recvfrom cuts it) with
	// Aux = the address's length, or -errno.
	OpSockRecvFrom
	// OpSockSendTo sends one datagram (loop.sock_sendto) with one sendto(2)
	// on Fd, from the gl_sendto block at Ptr (namelen 0: no address), once
	// Fd takes it. As OpSockSend otherwise (the fd's one send): one EvSock,
	// Res = the bytes sent, or -errno.
	OpSockSendTo
	// OpSockSendfile sends Len bytes (at most SendfileMax) of the file whose
	// fd is Arg, from file offset Ptr, on Fd (loop.sock_sendfile) with
	// sendfile(2), an explicit offset leaving the file's position alone: at
	// once as far as the socket takes, then one sendfile(2) each time Fd is
	// writable, as asyncio's selector loop makes one os.sendfile per
	// writability event. It takes the fd's one send, as OpSockSend does. The
	// file fd is lent, like Fd: Go uses it only while the op is live (never
	// after its EvSock) and closes neither. Exactly one EvSock answers it:
	// Res = the bytes sent (fewer than Len only at the end of the file), or
	// -errno with Aux = bytes sent before the error, -ECANCELED (Aux
	// likewise) when OpSockStop stopped it or a later send on Fd replaced it.
	OpSockSendfile
	// OpRecvRecord reads exactly one TLS record (its 5-byte header and the
	// body the header's length names) from the stream socket Fd, and never a
	// byte past it: what follows stays in the socket, for the kernel TLS RX
	// that OpKTLS may install next, or for the next OpRecvRecord. Go reads
	// it itself inside Poll when Fd is readable (epoll readiness, or an
	// io_uring POLL_ADD: never a recv in the kernel), as many reads as the
	// record takes; the bytes so far are kept per fd. Exactly one EvRecv
	// answers it, as OpRecvStart's chunks look but without FlagMore: Res =
	// the record's length (header included), Ptr/Buf naming a buffer C gives
	// back with OpBufReturn (a record buffer: Buf has RecordBufBit); Res 0:
	// end of stream before the record's first byte; -EBADMSG: the header is
	// no TLS record's (type not 20..24, or a body longer than RecordMaxBody),
	// its 5 bytes are consumed; -EBUSY: a receive (OpRecvStart or another
	// OpRecvRecord) is armed on Fd already; -ENOBUFS: no record buffer left;
	// or another -errno (the partial record is dropped). End of stream in
	// the middle of a record delivers the partial bytes as the answer (Res
	// < the header's length), and the next OpRecvRecord answers 0. One at a
	// time per fd: C asks for the next after each answer.
	// OpRecvStop and OpClose stop it as they stop OpRecvStart: no answer
	// comes for it after them. After OpRecvStop the bytes of a record read
	// so far stay with the fd: a later OpRecvRecord goes on with that
	// record, and a later OpRecvStart delivers them as its first chunk, so
	// no byte is lost. OpRecvStart on an fd with an OpRecvRecord pending
	// answers that one with -ECANCELED and takes over likewise. A close or
	// an abort gives the bytes' buffer back (nobody will read them).
	// After an OpRecvStart and OpRecvStop (STARTTLS), what the stopped
	// receive took in flight (io_uring) comes first, as EvRecv chunks with
	// FlagMore (the answer has none), and an end of stream it met is the
	// answer; the record is read only once that receive has left the kernel.
	OpRecvRecord
	// OpKTLS installs kernel TLS on the TCP socket Fd once its handshake is
	// done in user space. Ptr points to a KTLSParams (gl_ktls) in C memory
	// that C keeps unchanged until the EvKTLS answering it; Go reads it only
	// when the op runs, copies it and wipes its copies of the secrets after
	// use, and never touches it after EvKTLS. Ordered with the output
	// queue: it runs once every earlier OpSend/OpSendTo/OpSendfile/
	// OpShutdown on Fd is done (fully written), and later ones wait for it.
	// Running derives the record keys (TLS 1.3: from the traffic secrets;
	// TLS 1.2: from the master secret and the hello randoms) and installs
	// TX (this end's keys, at TXSeq) and, with RX 1, RX (the peer's, at
	// RXSeq). Exactly one EvKTLS answers it: Res 0 with Aux = KTLSTX|KTLSRX
	// as installed; Res -errno with Aux 0 when the socket is unchanged
	// (-ENOENT: the kernel has no tls module; -EOPNOTSUPP: the kernel
	// refuses this version or suite; -EINVAL: bad params: Ptr 0, unknown
	// version, a suite kernel TLS cannot carry, SecretLen not the suite's
	// hash length, Server or RX not 0/1; -ENOTCONN, -EBUSY...); Res -errno
	// with Aux != 0 when TX went in and RX did not (the connection cannot go
	// on); -ECANCELED, Aux 0, when an abort dropped it before it ran. C must
	// not have a receive armed on Fd when it asks for RX (it reads the
	// handshake with OpRecvRecord) and starts OpRecvStart after EvKTLS.
	// From then on a receive on Fd gets plaintext; a record that is not
	// application data ends it (read(2) and io_uring's recv fail with EIO
	// on one, and Go then reads it with RecvRecord): the peer's
	// close_notify (an alert whose description is 0) is end of stream (Res
	// 0); TLS 1.3 NewSessionTickets (handshake records of message type 4
	// only) are dropped and receiving goes on; any other record ends the
	// receive with Res -EPROTO and Aux = record type << 8 | alert
	// description or handshake message type (0xff: a record too short to
	// say); a record the kernel cannot decrypt is -EBADMSG.
	// An OpSend whose Arg has ArgRecType(t) (t != 0) sends its bytes as one
	// record of type t (an alert: 21) through kernel TLS TX
	// (sendmsg with TLS_SET_RECORD_TYPE), in queue order, answered with
	// EvSend as any send (-EINVAL for Len 0).
	OpKTLS
	opCount
)

// Completion kinds.
const (
	EvNone uint8 = iota
	EvRecv
	EvSend
	EvShutdown
	EvClosed
	EvAccept
	EvConnect
	EvPoll
	// EvPosted is a result posted by a goroutine (DNS, TLS handshakes) through Loop.Post.
	EvPosted
	// EvDgram is one received datagram or receive error (OpDgramRecvStart).
	EvDgram
	// EvSendfile answers OpSendfile.
	EvSendfile
	// EvSock answers OpSockRecv, OpSockSend and the other OpSock* ops.
	EvSock
	// EvKTLS answers OpKTLS: Res 0 or -errno, Aux = KTLSTX|KTLSRX installed.
	EvKTLS
)

// EvKTLS's Aux bits: the directions kernel TLS carries on the socket.
const (
	KTLSTX uint32 = 1
	KTLSRX uint32 = 2
)

// KTLSParams.Flags: Go's own record layer (softtls.go, docs/softtls.md)
// where the kernel has none. KTLSSoft: if the kernel cannot take the keys
// before any direction went in (no tls module, a version or suite it
// refuses, an fd that is not TCP), Go seals and opens the records of this
// fd itself. KTLSSoftOnly: do not try the kernel. Either needs RX 1.
const (
	KTLSSoft     uint8 = 1
	KTLSSoftOnly uint8 = 2
)

// KTLSSoftware, in EvKTLS's Aux with KTLSTX|KTLSRX: the record layer is
// Go's (soft TLS), not the kernel's. Everything after EvKTLS is as for
// kernel TLS, except that OpSendfile answers -EOPNOTSUPP.
const KTLSSoftware uint32 = 4

// ArgRecType is an OpSend's Arg for a record of type t (GL_ARG_RECTYPE):
// see OpKTLS.
func ArgRecType(t uint8) uint32 { return uint32(t) << 8 }

// argRecTypeMask is where ArgRecType lies in Arg.
const argRecTypeMask uint32 = 0xff00

// RecordMaxBody is the longest record body OpRecvRecord accepts: 2^14
// bytes of plaintext plus 2048 of expansion (RFC 5246 6.2.3; TLS 1.3 allows
// less).
const RecordMaxBody = 16384 + 2048

// RecordBufBit marks a record buffer id in EvRecv.Buf and OpBufReturn: the
// buffers of OpRecvRecord and of the records a kernel-TLS receive reads
// itself (recvrecord.go), a pool apart from the receive buffers because
// io_uring owns those through its buffer ring.
const RecordBufBit uint32 = 1 << 30

// KTLSParams is gl_ktls (pybind/goloop.h): what OpKTLS's Ptr points to.
type KTLSParams struct {
	Version      uint16   // TLS12 or TLS13
	Suite        uint16   // IANA cipher suite id
	Server       uint8    // 1: this end is the server (it sends with the server's keys)
	RX           uint8    // 1: install RX as well as TX
	SecretLen    uint8    // TLS 1.3: bytes in each traffic secret (the suite's hash length)
	Flags        uint8    // KTLSSoft, KTLSSoftOnly (was padding: 0 is kernel TLS only)
	TXSeq        uint64   // sequence number of the next record this end sends
	RXSeq        uint64   // ... and of the next it receives
	ClientRandom [32]byte // TLS 1.2
	ServerRandom [32]byte // TLS 1.2
	Master       [48]byte // TLS 1.2 master secret
	ClientSecret [48]byte // TLS 1.3 CLIENT_TRAFFIC_SECRET_0
	ServerSecret [48]byte // TLS 1.3 SERVER_TRAFFIC_SECRET_0
}

var _ [232 - unsafe.Sizeof(KTLSParams{})]byte
var _ [unsafe.Sizeof(KTLSParams{}) - 232]byte

// SendfileMax is the most one OpSendfile may ask for: its count must fit
// in Res.
const SendfileMax = 1 << 30

// Completion flags.
const (
	FlagMore uint8 = 1 // the operation is still armed
)

// OpClose arguments.
const (
	CloseAbort uint32 = 1
	// CloseUpgrade (with CloseAbort) turns a graceful OpClose with the same
	// Token that is still waiting behind sends into an abort. If that close
	// already ran or is under way, the upgrade does nothing and completes
	// nothing: the fd number may by then belong to someone else.
	CloseUpgrade uint32 = 2
)

// hasGraceful reports whether out holds a graceful close named token.
func hasGraceful(out []queued, token uint64) bool {
	for _, q := range out {
		if q.op == OpClose && q.token == token {
			return true
		}
	}
	return false
}

// ArgNotSock, in the Arg of OpRecvStart and OpSend, says Fd is not a
// socket (a pipe, a character device such as a PTY): Go reads and writes it
// with read(2)/write(2) (IORING_OP_READ/WRITE) from the first operation on,
// instead of learning it from an ENOTSOCK, which under io_uring costs a
// round trip: a pipe transport's first write would reach the pipe only at
// the next Poll, where asyncio's write() has written it at once.
const ArgNotSock uint32 = 1 << 31

// ArgOnce, in the Arg of OpRecvStart, asks for one chunk at a time: the
// next is received only after the Poll that reported this one, so C's
// OpRecvStop in the next batch stops receiving after one more chunk at
// most. For a protocol that pauses reading (a flow-controlled reader):
// where a continuous receive would take everything the socket holds into
// memory at every resume, the peer is held back by the kernel's buffers,
// as asyncio's one read per readiness does. The io_uring backend makes each
// a single-shot receive instead of a multishot one; the epoll backend reads
// one chunk per readiness anyway.
const ArgOnce uint32 = 1 << 30

// Poll masks (the same bits as EPOLLIN/EPOLLOUT/EPOLLERR/EPOLLHUP).
const (
	PollIn  uint32 = 0x1
	PollOut uint32 = 0x4
	PollErr uint32 = 0x8
	PollHup uint32 = 0x10
)

// The op and event numbers the kernel TLS ABI fixed in pybind/goloop.h.
var _ [OpRecvRecord - 23]byte
var _ [23 - OpRecvRecord]byte
var _ [OpKTLS - 24]byte
var _ [24 - OpKTLS]byte
var _ [EvKTLS - 12]byte
var _ [12 - EvKTLS]byte
