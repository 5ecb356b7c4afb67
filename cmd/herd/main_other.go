//go:build !linux

// Command herd is a prefork server runtime for Linux. Built elsewhere it
// says so; programs using the herd package run there in one process.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "herd: the herd command needs Linux (this is %s); the herd package runs a handler in one process here\n", runtime.GOOS)
	os.Exit(1)
}
