package goloop

import "context"

// "ktls.available" answers at once (a quick method) whether this kernel can
// take TLS keys: "" when it can, otherwise why not. The Python side asks
// once per process before offering kernel TLS to a connection, so a
// machine without the tls module never pays for record-at-a-time
// handshakes (docs/ktls.md).
func init() {
	avail := func() []byte {
		if err := KTLSAvailable(); err != nil {
			return []byte(err.Error())
		}
		return []byte{}
	}
	RegisterMethod("ktls.available", func(_ context.Context, req []byte) ([]byte, error) { return avail(), nil })
	RegisterQuick("ktls.available", func(req []byte) ([]byte, error, bool) { return avail(), nil, true })
}
