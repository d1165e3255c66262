// oomgo: the workload of the container tests. A static binary, so it runs in
// a FROM scratch image.
//
//	oomgo grow        allocate and touch 1 MiB at a time until killed
//	oomgo grow MS     the same, after running MS milliseconds (a service that
//	                  starts, serves, then grows)
//	oomgo hold N      allocate N MiB, then sleep
//	oomgo sleep       sleep
package main

import (
	"os"
	"strconv"
	"time"
)

func touch(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	return b
}

func main() {
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
		for {
			keep = append(keep, touch(1<<20))
			time.Sleep(time.Millisecond)
		}
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
