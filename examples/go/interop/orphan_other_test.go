//go:build !linux

package interop

import "os/exec"

// dieWithTest: only Linux can tie the server's life to the test binary's.
func dieWithTest(cmd *exec.Cmd) {}
