package main

import "syscall"

// childProcAttr puts the gateway in its own process group, so that Ctrl-C
// reaches only uploadbench (which then kills it), and has the kernel kill it
// if uploadbench dies without cleaning up.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
