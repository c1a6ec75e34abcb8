module github.com/goloop-dev/goloop

go 1.26.0

require (
	github.com/miekg/dns v1.1.73
	golang.org/x/crypto v0.59.0
	golang.org/x/sys v0.50.0
)

require golang.org/x/net v0.62.0 // indirect
