//go:build unix

package main

import "syscall"

// raiseOpenFiles raises the open-files limit to the hard limit, for the
// benchmark and the gateway it starts (which inherits it), and returns it.
func raiseOpenFiles() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	return l.Cur, nil
}
