package shm

import (
	"strconv"
	"unsafe"
)

func uintptrOf[T any](p *T) uintptr { return uintptr(unsafe.Pointer(p)) }

func itoa(n int) string { return strconv.Itoa(n) }
