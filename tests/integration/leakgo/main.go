// leakgo: a Go service with leaks in known places, for the heap-profile
// tests. It keeps everything it allocates until its cgroup's limit kills it.
//
//	leakgo sites       every round: leakAlpha 5 chunks, leakBeta 3, leakGamma 2
//	                   (through a 40-deep recursion): in-use bytes 50/30/20 %
//	leakgo many N      a chunk from each of N buckets, round after round: stack
//	                   d (recursion depth d over leakDeep, d < N) allocates
//	                   chunk+16*d bytes (the runtime keeps a bucket per stack
//	                   and size, and cuts stacks at 128 frames)
//	leakgo phases MIB  leakAlpha keeps MIB MiB, then only leakBeta grows
//	leakgo hold MIB F  keep MIB MiB from leakAlpha (F alpha) or leakBeta (F
//	                   beta), print "held", then sleep
//	leakgo off         leakAlpha only, with runtime.MemProfileRate = 0
//
// Each chunk is 32 KiB (LEAKGO_CHUNK=N bytes sets it). LEAKGO_RATE=N sets runtime.MemProfileRate (bytes per
// sample; the runtime's default is 512 KiB); LEAKGO_ROUND_SLEEP_MS=N sleeps N ms
// after each round of `sites` (a slow leak). The program prints "up" once it
// has started, then grows after LEAKGO_WAIT_MS (default 1000) milliseconds.
// Unlike oomgo it references runtime/pprof, so the linker keeps memory
// profiling on.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"
)

var chunk = 32 << 10

var keep [][]byte

func touch(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	return b
}

// fill touches each page, so the memory is charged to the cgroup.
func fill(b []byte) []byte {
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return b
}

//go:noinline
func leakAlpha() { keep = append(keep, fill(make([]byte, chunk))) }

//go:noinline
func leakBeta() { keep = append(keep, fill(make([]byte, chunk))) }

// leakGamma's allocation is made in touch, inlined into it: the profile's
// site is touch, in a location that also names leakGamma.
//
//go:noinline
func leakGamma() { keep = append(keep, touch(chunk)) }

//go:noinline
func recurse(depth int, leaf func()) {
	if depth == 0 {
		leaf()
		return
	}
	recurse(depth-1, leaf)
}

//go:noinline
func leakDeep(n int) { keep = append(keep, fill(make([]byte, n))) }

func main() {
	if v, err := strconv.Atoi(os.Getenv("LEAKGO_RATE")); err == nil {
		runtime.MemProfileRate = v
	}
	if v, err := strconv.Atoi(os.Getenv("LEAKGO_CHUNK")); err == nil && v > 0 {
		chunk = v
	}
	wait := 1000
	if v, err := strconv.Atoi(os.Getenv("LEAKGO_WAIT_MS")); err == nil {
		wait = v
	}
	if os.Getenv("LEAKGO_WRITE_PROFILE") != "" {
		// Never set by the tests: it makes runtime.MemProfile reachable, as
		// any program that can write a heap profile has it.
		_ = pprof.WriteHeapProfile(io.Discard)
	}
	mode := "sites"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	fmt.Println("up")
	time.Sleep(time.Duration(wait) * time.Millisecond)
	switch mode {
	case "sites":
		pause := 0
		if v, err := strconv.Atoi(os.Getenv("LEAKGO_ROUND_SLEEP_MS")); err == nil {
			pause = v
		}
		for {
			if pause > 0 {
				time.Sleep(time.Duration(pause) * time.Millisecond)
			}
			for i := 0; i < 5; i++ {
				leakAlpha()
			}
			for i := 0; i < 3; i++ {
				leakBeta()
			}
			for i := 0; i < 2; i++ {
				recurse(40, leakGamma)
			}
		}
	case "many":
		n, _ := strconv.Atoi(os.Args[2])
		for {
			for d := 0; d < n; d++ {
				size := chunk + 16*d
				recurse(d%200, func() { leakDeep(size) })
			}
		}
	case "phases":
		mib, _ := strconv.Atoi(os.Args[2])
		for i := 0; i < mib<<20/chunk; i++ {
			leakAlpha()
		}
		for {
			leakBeta()
		}
	case "hold":
		mib, _ := strconv.Atoi(os.Args[2])
		leak := leakAlpha
		if len(os.Args) > 3 && os.Args[3] == "beta" {
			leak = leakBeta
		}
		for i := 0; i < mib<<20/chunk; i++ {
			leak()
		}
		runtime.GC() // the profile's counts are as of the last completed GC
		fmt.Println("held")
		time.Sleep(time.Hour)
	case "off":
		runtime.MemProfileRate = 0
		for {
			leakAlpha()
		}
	}
}
