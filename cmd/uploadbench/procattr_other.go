//go:build !linux

package main

import "syscall"

// childProcAttr is the default elsewhere; compare and rss need Linux's /proc.
func childProcAttr() *syscall.SysProcAttr {
	return nil
}
