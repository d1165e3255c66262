// oomgo: the workload of the container tests. A static binary, so it runs in
// a FROM scratch image.
//
//	oomgo grow        allocate and touch 1 MiB at a time until killed, printing
//	                  "gc N" (runtime.NumGC so far) before each 64 KiB of it
//	oomgo grow MS     the same, after running MS milliseconds (a service that
//	                  starts, serves, then grows)
//	oomgo grow MS S   ... growing 1 MiB every S milliseconds
//	oomgo hold N      allocate N MiB, then sleep
//	oomgo sleep       sleep
//	oomgo churn N [L] allocate and drop N small objects (GC-heavy) while L MiB stay
//	                  live (fewer, bigger GCs); print the seconds taken and the GCs
//
// Before any of these, the program sets its own runtime settings when asked,
// as automemlimit-style libraries do (names the runtime itself never reads):
//
//	OOMGO_SET_MEMORY_LIMIT_MIB=N  debug.SetMemoryLimit(N MiB)
//	OOMGO_SET_GC_PERCENT=N        debug.SetGCPercent(N)
//	OOMGO_SET_GOMAXPROCS=N        runtime.GOMAXPROCS(N)
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"time"
)

// numGC is runtime.NumGC without ReadMemStats' stop-the-world.
func numGC() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func touch(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	return b
}

// setting reads an OOMGO_SET_* variable: its number, and whether it was set.
func setting(name string) (int, bool) {
	v, ok := os.LookupEnv(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

func main() {
	if mib, ok := setting("OOMGO_SET_MEMORY_LIMIT_MIB"); ok {
		debug.SetMemoryLimit(int64(mib) << 20)
	}
	if pct, ok := setting("OOMGO_SET_GC_PERCENT"); ok {
		debug.SetGCPercent(pct)
	}
	if procs, ok := setting("OOMGO_SET_GOMAXPROCS"); ok {
		runtime.GOMAXPROCS(procs)
	}
	mode := "grow"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	var keep [][]byte
	switch mode {
	case "grow":
		if len(os.Args) > 2 {
			ms, _ := strconv.Atoi(os.Args[2])
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		step := time.Millisecond
		if len(os.Args) > 3 {
			ms, _ := strconv.Atoi(os.Args[3])
			step = time.Duration(ms) * time.Millisecond
		}
		for {
			// 1 MiB a step, in 64 KiB pieces with the GC count printed
			// before each: in a death spiral several GCs can run within a
			// step, and the last line must be close to the kill.
			for i := 0; i < 16; i++ {
				fmt.Printf("gc %d\n", numGC())
				keep = append(keep, touch(64<<10))
			}
			time.Sleep(step)
		}
	case "churn":
		n, _ := strconv.Atoi(os.Args[2])
		if len(os.Args) > 3 {
			live, _ := strconv.Atoi(os.Args[3])
			for i := 0; i < live; i++ {
				keep = append(keep, touch(1<<20))
			}
		}
		start := time.Now()
		var sink []byte
		for i := 0; i < n; i++ {
			sink = make([]byte, 256+i%1024)
			sink[0] = byte(i)
		}
		_ = sink
		var st runtime.MemStats
		runtime.ReadMemStats(&st)
		fmt.Printf("%.6f %d\n", time.Since(start).Seconds(), st.NumGC)
		runtime.KeepAlive(keep)
		return
	case "hold":
		mib, _ := strconv.Atoi(os.Args[2])
		for i := 0; i < mib; i++ {
			keep = append(keep, touch(1<<20))
		}
	}
	for {
		time.Sleep(time.Hour)
		_ = keep
	}
}
