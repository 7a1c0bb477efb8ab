package dyncall

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Descriptors finds methods in descriptor sets (FileDescriptorSet files,
// as `protoc --include_imports --descriptor_set_out=FILE` writes them) and
// then in the descriptors compiled into this program (grpc-go's health and
// reflection services, for instance).
type Descriptors struct {
	sets []*protoregistry.Files
}

// LoadDescriptorSets reads each FileDescriptorSet file.
func LoadDescriptorSets(paths ...string) (*Descriptors, error) {
	d := &Descriptors{}
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var set descriptorpb.FileDescriptorSet
		if err := proto.Unmarshal(raw, &set); err != nil {
			return nil, fmt.Errorf("%s: not a FileDescriptorSet: %v", path, err)
		}
		files, err := protodesc.NewFiles(&set)
		if err != nil {
			return nil, fmt.Errorf("%s: %v (made with --include_imports?)", path, err)
		}
		d.sets = append(d.sets, files)
	}
	return d, nil
}

// Method finds "/pkg.Service/Method" (or "pkg.Service/Method").
func (d *Descriptors) Method(path string) (protoreflect.MethodDescriptor, error) {
	full := strings.Replace(strings.TrimPrefix(path, "/"), "/", ".", 1)
	for _, files := range append(d.sets, protoregistry.GlobalFiles) {
		desc, err := files.FindDescriptorByName(protoreflect.FullName(full))
		if err != nil {
			continue
		}
		if m, ok := desc.(protoreflect.MethodDescriptor); ok {
			return m, nil
		}
		return nil, fmt.Errorf("%s is a %T, not a method", full, desc)
	}
	return nil, fmt.Errorf("%s: no such method in the descriptor sets given (nor health, reflection)", path)
}

// Methods lists "/pkg.Service/Method" for every method of the descriptor
// sets, sorted.
func (d *Descriptors) Methods() []string {
	var paths []string
	for _, files := range d.sets {
		files.RangeFiles(func(f protoreflect.FileDescriptor) bool {
			for i := 0; i < f.Services().Len(); i++ {
				s := f.Services().Get(i)
				for j := 0; j < s.Methods().Len(); j++ {
					paths = append(paths, fmt.Sprintf("/%s/%s", s.FullName(), s.Methods().Get(j).Name()))
				}
			}
			return true
		})
	}
	sort.Strings(paths)
	return paths
}

// ShapeOf is a method's call shape.
func ShapeOf(m protoreflect.MethodDescriptor) Shape {
	return Shape{ClientStreaming: m.IsStreamingClient(), ServerStreaming: m.IsStreamingServer()}
}
