// Package dyncall calls any gRPC method without generated code: the
// request and reply messages are raw bytes or dynamic protobuf messages
// (dynamicpb, built from descriptors at run time), and the call takes the
// method's own shape (unary, server, client or bidi streaming).
package dyncall

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Codec marshals []byte as it is (the message's wire bytes) and any
// protobuf message (google.golang.org/protobuf, dynamic ones included). It
// is the same protobuf wire format as grpc-go's own codec, which in 1.33
// only takes messages of the older github.com/golang/protobuf API.
type Codec struct{}

// Name is the content-subtype; "proto" is what every gRPC server expects.
func (Codec) Name() string { return "proto" }

// Marshal encodes a request: []byte as is, or a protobuf message.
func (Codec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case proto.Message:
		return proto.Marshal(m)
	}
	return nil, fmt.Errorf("dyncall: cannot marshal %T", v)
}

// Unmarshal decodes a reply into *[]byte (the bytes as they came) or a
// protobuf message.
func (Codec) Unmarshal(data []byte, v interface{}) error {
	switch m := v.(type) {
	case *[]byte:
		*m = append([]byte(nil), data...)
		return nil
	case proto.Message:
		return proto.Unmarshal(data, m)
	}
	return fmt.Errorf("dyncall: cannot unmarshal into %T", v)
}

// Shape is how a method streams.
type Shape struct {
	ClientStreaming, ServerStreaming bool
}

// String names the shape: unary, server streaming, client streaming or
// bidi streaming.
func (s Shape) String() string {
	switch {
	case s.ClientStreaming && s.ServerStreaming:
		return "bidi streaming"
	case s.ClientStreaming:
		return "client streaming"
	case s.ServerStreaming:
		return "server streaming"
	}
	return "unary"
}

// Call calls method ("/pkg.Service/Method") in its shape: it sends the
// requests (exactly one unless the client streams), half-closes, and
// reads the replies to the end, handing each to onReply. newReply makes an
// empty reply ([]byte pointers or protobuf messages). The error is the
// call's status (status.FromError), or onReply's error.
func Call(ctx context.Context, cc grpc.ClientConnInterface, method string, shape Shape, requests []interface{},
	newReply func() interface{}, onReply func(interface{}) error, opts ...grpc.CallOption) error {
	if !shape.ClientStreaming && len(requests) != 1 {
		return fmt.Errorf("%s is %s: it takes exactly one request, not %d", method, shape, len(requests))
	}
	opts = append([]grpc.CallOption{grpc.ForceCodec(Codec{})}, opts...)
	if shape == (Shape{}) {
		reply := newReply()
		if err := cc.Invoke(ctx, method, requests[0], reply, opts...); err != nil {
			return err
		}
		return onReply(reply)
	}
	desc := &grpc.StreamDesc{ClientStreams: shape.ClientStreaming, ServerStreams: shape.ServerStreaming}
	stream, err := cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return err
	}
	for _, request := range requests {
		if err := stream.SendMsg(request); err != nil {
			if err == io.EOF {
				break // the server ended the call: RecvMsg gives its status
			}
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		reply := newReply()
		err := stream.RecvMsg(reply)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := onReply(reply); err != nil {
			return err
		}
		if !shape.ServerStreaming {
			return nil // one reply; RecvMsg has seen the call end
		}
	}
}

// CallEmpty calls method with one empty request message (zero bytes on the
// wire, the default message of any type) and discards the replies: all
// that is left is the call's status.
func CallEmpty(ctx context.Context, cc grpc.ClientConnInterface, method string, shape Shape, opts ...grpc.CallOption) error {
	return Call(ctx, cc, method, shape, []interface{}{[]byte{}},
		func() interface{} { return new([]byte) },
		func(interface{}) error { return nil }, opts...)
}
