package mtls

import "google.golang.org/grpc/codes"

// CodeName is the canonical upper-case name of a gRPC status code
// (PERMISSION_DENIED), as other languages and grpcurl print it; grpc-go's
// String() gives PermissionDenied.
func CodeName(c codes.Code) string {
	names := [...]string{
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
		"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
		"UNAUTHENTICATED",
	}
	if int(c) < len(names) {
		return names[c]
	}
	return c.String()
}
