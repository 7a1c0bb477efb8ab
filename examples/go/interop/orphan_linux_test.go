package interop

import (
	"os/exec"
	"syscall"
)

// dieWithTest has the kernel stop the server if the test binary dies
// without cleaning up (a panicking test skips TestMain's deferred stop).
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
