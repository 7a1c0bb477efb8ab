// For users with a Go module proxy. The versions are the ones Debian 12
// packages (golang-google-grpc-dev, golang-google-protobuf-dev), which is
// what the offline GOPATH build and the interop test use: see README.md.
module example.org/mtls-template/examples/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
